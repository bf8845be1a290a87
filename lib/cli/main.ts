/**
 * Runs the `vmsynth` command line (cli/entry.cts loads this): parses argv
 * against the command tree (program.ts) and turns what escapes a command
 * into an exit status: usage errors 64, VmsynthErrors their catalogue's.
 */
import { CommanderError } from 'commander';
import { VmsynthError } from '../core/errors.js';
import { buildProgram } from './program.js';

await buildProgram()
  .parseAsync(process.argv)
  .catch((err: unknown) => {
    // Option parsers throw VmsynthError(VMS_USAGE).
    if (err instanceof CommanderError) {
      // Help and version exit 0; commander already printed its usage error.
      process.exitCode = err.exitCode === 0 ? 0 : 64;
    } else if (err instanceof VmsynthError) {
      process.stderr.write(`vmsynth: error ${err.code}: ${err.message}\n  what to do: ${err.hint}\n`);
      process.exitCode = err.exitCode;
    } else {
      throw err;
    }
  });
