// ESLint with typescript-eslint's type-aware recommended rules; Prettier owns the layout
// (.prettierrc.json), so no stylistic rule is on here. Tuned where a rule fights a
// deliberate pattern of this code base, each saying why.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'native/build/**', 'bench/results/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      // `_name` marks what is unused on purpose (a parameter an interface dictates, a field dropped by a rest).
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none', ignoreRestSiblings: true },
      ],
      // Async functions without an await implement Promise-returning interfaces (command actions, readers, test bodies).
      '@typescript-eslint/require-await': 'off',
      // Rejections pass on what was thrown, which may be anything: wrapping it would lose it.
      '@typescript-eslint/prefer-promise-reject-errors': ['error', { allowThrowingUnknown: true }],
    },
  },
  {
    files: ['test/**'],
    rules: {
      // tap queues t.test() calls itself: a top-level or subtest call is not a dropped promise.
      '@typescript-eslint/no-floating-promises': [
        'error',
        { allowForKnownSafePromises: [{ from: 'package', package: '@tapjs/core', name: 'PromiseWithSubtest' }] },
      ],
      // Tests poke at decoded JSON, fuzzed MessagePack and mocks: values typed `any` on purpose.
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
      // Assertions are passed around as values (t.ok, t.equal).
      '@typescript-eslint/unbound-method': 'off',
      // Test names and comments print tallies, lists and error output as they come.
      '@typescript-eslint/restrict-template-expressions': 'off',
      '@typescript-eslint/no-base-to-string': 'off',
    },
  },
  { files: ['**/*.js', '**/*.mjs', '**/*.cjs'], ...tseslint.configs.disableTypeChecked },
  { files: ['**/*.mjs', '**/*.js'], languageOptions: { globals: { process: 'readonly', console: 'readonly' } } },
);
