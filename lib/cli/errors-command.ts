/**
 * `vmsynth errors`: every error code vmsynth (and a server, on the wire) can
 * give, with its exit status and what to do, from lib/core/errors.ts. Its
 * markdown form is the table in docs/protocol.md (a test keeps the two in step).
 */
import type { Command } from 'commander';
import { ERRORS } from '../core/errors.js';
import { runCommand } from './run.js';

/** The codes as a markdown table (docs/protocol.md holds this between its error-codes markers). */
export function errorCodesMarkdown(): string {
  const rows = Object.entries(ERRORS).map(
    ([code, e]) => `| \`${code}\` | ${e.exit} | ${e.hint.replace(/\|/g, '\\|')} |`,
  );
  return ['| code | exit | what to do |', '|---|---|---|', ...rows].join('\n');
}

export function registerErrorsCommand(program: Command): void {
  program
    .command('errors')
    .description('List every error code, with the exit status and what to do about it.')
    .option('--markdown', 'as the markdown table docs/protocol.md holds')
    .option('--json', 'as JSON: [{ code, exit, hint }]')
    .action(async (o: { markdown?: boolean; json?: boolean }) =>
      runCommand(!!o.json, async ({ json }) => {
        const list = Object.entries(ERRORS).map(([code, e]) => ({ code, exit: e.exit, hint: e.hint }));
        if (o.markdown) console.log(errorCodesMarkdown());
        else if (!json) for (const e of list) console.log(`${e.code} (exit ${e.exit})\n  ${e.hint}`);
        return list;
      }),
    );
}
