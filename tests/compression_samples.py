"""Realistic tool outputs for the compression tests: what agents' shell commands print."""

# ruff: noqa: RUF001, E501

from __future__ import annotations

PYTEST_VERBOSE = """\
============================= test session starts ==============================
platform linux -- Python 3.11.7, pytest-8.3.2, pluggy-1.5.0 -- /work/app/.venv/bin/python
cachedir: .pytest_cache
rootdir: /work/app
configfile: pyproject.toml
plugins: hypothesis-6.108.5, anyio-4.4.0, timeout-2.3.1
collecting ... collected 9 items

tests/test_api.py::test_health PASSED                                    [ 11%]
tests/test_api.py::test_create_user PASSED                               [ 22%]
tests/test_api.py::test_create_user_duplicate FAILED                     [ 33%]
tests/test_api.py::test_delete_user PASSED                               [ 44%]
tests/test_models.py::test_user_repr PASSED                              [ 55%]
tests/test_models.py::test_order_total[1-2] PASSED                       [ 66%]
tests/test_models.py::test_order_total[3-4] PASSED                       [ 77%]
tests/test_models.py::test_order_total[5-6] ERROR                        [ 88%]
tests/test_models.py::test_slow SKIPPED (needs --runslow)                [100%]

==================================== ERRORS ====================================
_______________________ ERROR at setup of test_order_total[5-6] ________________________

    @pytest.fixture
    def db():
>       raise RuntimeError("database unavailable")
E       RuntimeError: database unavailable

tests/conftest.py:14: RuntimeError
=================================== FAILURES ===================================
__________________________ test_create_user_duplicate __________________________

client = <TestClient object at 0x7f3a2c1b9d90>

    def test_create_user_duplicate(client):
        client.post("/users", json={"name": "ann"})
        response = client.post("/users", json={"name": "ann"})
>       assert response.status_code == 409
E       assert 500 == 409
E        +  where 500 = <Response [500]>.status_code

tests/test_api.py:27: AssertionError
=============================== warnings summary ===============================
tests/test_api.py::test_health
tests/test_api.py::test_create_user
tests/test_api.py::test_create_user_duplicate
tests/test_api.py::test_delete_user
tests/test_models.py::test_user_repr
tests/test_models.py::test_order_total[1-2]
tests/test_models.py::test_order_total[3-4]
  /work/app/app/db.py:41: DeprecationWarning: datetime.datetime.utcnow() is deprecated
    now = datetime.utcnow()

-- Docs: https://docs.pytest.org/en/stable/how-to/capture-warnings.html
=========================== short test summary info ============================
FAILED tests/test_api.py::test_create_user_duplicate - assert 500 == 409
ERROR tests/test_models.py::test_order_total[5-6] - RuntimeError: database unavailable
======= 1 failed, 6 passed, 1 skipped, 7 warnings, 1 error in 0.87s ========
"""

PYTEST_QUIET = (
    "\n".join(["." * 72 + f" [{p:3d}%]" for p in range(5, 90, 5)])
    + "\n....F..........s.......x............................................... [ 95%]\n"
    + "........................ [100%]\n"
    + """=================================== FAILURES ===================================
_______________________________ test_parse_date ________________________________

    def test_parse_date():
>       assert parse_date("2024-02-30") is None
E       ValueError: day is out of range for month

tests/test_dates.py:88: ValueError
=========================== short test summary info ============================
FAILED tests/test_dates.py::test_parse_date - ValueError: day is out of range for month
1 failed, 1290 passed, 1 skipped, 1 xfailed in 12.41s
"""
)

PYTEST_ALL_PASSING = """\
============================= test session starts ==============================
platform linux -- Python 3.11.7, pytest-8.3.2, pluggy-1.5.0
rootdir: /work/app
collected 220 items

tests/test_a.py .......................................................... [ 26%]
tests/test_b.py .......................................................... [ 52%]
tests/test_c.py .......................................................... [ 79%]
tests/test_d.py ..............................................             [100%]

============================= 220 passed in 3.02s ==============================
"""

JEST = """\
> web@1.0.0 test
> jest --verbose

 PASS  src/utils/format.test.ts (5.21 s)
  formatDate
    ✓ formats ISO dates (3 ms)
    ✓ handles invalid input (1 ms)
 PASS  src/utils/money.test.ts
  money
    ✓ adds cents (2 ms)
    ✓ rounds half even (1 ms)
 FAIL  src/components/Cart.test.tsx
  Cart
    ✓ renders empty state (25 ms)
    ✕ shows the total (14 ms)

  ● Cart › shows the total

    expect(received).toHaveTextContent()

    Expected element to have text content:
      $12.50
    Received:
      $12.5

      18 |     render(<Cart items={items} />);
      19 |     const total = screen.getByTestId("total");
    > 20 |     expect(total).toHaveTextContent("$12.50");
         |                   ^
      21 |   });
      22 | });

      at Object.<anonymous> (src/components/Cart.test.tsx:20:19)

Test Suites: 1 failed, 2 passed, 3 total
Tests:       1 failed, 5 passed, 6 total
Snapshots:   0 total
Time:        6.482 s
Ran all test suites.
"""

VITEST = """\
 ✓ src/math.test.ts (12 tests) 4ms
 ✓ src/strings.test.ts (30 tests) 9ms
 ❯ src/parser.test.ts (8 tests | 1 failed) 15ms
   ✓ parses numbers
   × parses dates
     → expected '2024-01-01' to be '2024-01-02'

⎯⎯⎯⎯⎯⎯⎯ Failed Tests 1 ⎯⎯⎯⎯⎯⎯⎯

 FAIL  src/parser.test.ts > parser > parses dates
AssertionError: expected '2024-01-01' to be '2024-01-02'
 ❯ src/parser.test.ts:41:22

 Test Files  1 failed | 2 passed (3)
      Tests  1 failed | 49 passed (50)
   Duration  812ms
"""

GO_TEST = """\
=== RUN   TestParse
--- PASS: TestParse (0.00s)
=== RUN   TestParseEmpty
--- PASS: TestParseEmpty (0.00s)
=== RUN   TestTable
=== RUN   TestTable/one
=== RUN   TestTable/two
    table_test.go:31: got 3, want 4
--- FAIL: TestTable (0.00s)
    --- PASS: TestTable/one (0.00s)
    --- FAIL: TestTable/two (0.00s)
FAIL
FAIL\texample.com/app/parser\t0.012s
ok  \texample.com/app/server\t0.034s
ok  \texample.com/app/store\t(cached)
?   \texample.com/app/cmd\t[no test files]
FAIL
"""

CARGO_TEST = """\
   Compiling libc v0.2.155
   Compiling serde v1.0.204
   Compiling app v0.1.0 (/work/app)
    Finished `test` profile [unoptimized + debuginfo] target(s) in 4.21s
     Running unittests src/lib.rs (target/debug/deps/app-3f2a1b4c5d6e7f80)

running 5 tests
test parser::tests::parses_empty ... ok
test parser::tests::parses_numbers ... ok
test store::tests::roundtrip ... FAILED
test store::tests::ignored_one ... ignored
test util::tests::clamp ... ok

failures:

---- store::tests::roundtrip stdout ----
thread 'store::tests::roundtrip' panicked at src/store.rs:88:9:
assertion `left == right` failed
  left: 3
 right: 4
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace


failures:
    store::tests::roundtrip

test result: FAILED. 3 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s

error: test failed, to rerun pass `--lib`
"""

PIP_INSTALL = """\
Collecting requests==2.32.3
  Downloading requests-2.32.3-py3-none-any.whl.metadata (4.6 kB)
Collecting charset-normalizer<4,>=2 (from requests==2.32.3)
  Using cached charset_normalizer-3.3.2-cp311-cp311-manylinux_2_17_x86_64.whl.metadata (33 kB)
Requirement already satisfied: idna<4,>=2.5 in ./.venv/lib/python3.11/site-packages (3.7)
Collecting urllib3<3,>=1.21.1 (from requests==2.32.3)
  Downloading urllib3-2.2.2-py3-none-any.whl.metadata (6.4 kB)
Downloading requests-2.32.3-py3-none-any.whl (64 kB)
   ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━ 64.9/64.9 kB 2.1 MB/s eta 0:00:00
Downloading urllib3-2.2.2-py3-none-any.whl (121 kB)
   ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━ 121.4/121.4 kB 5.3 MB/s eta 0:00:00
Collecting brokenpkg==0.1
  Downloading brokenpkg-0.1.tar.gz (3.1 kB)
  Preparing metadata (setup.py) ... error
  error: subprocess-exited-with-error

  × python setup.py egg_info did not run successfully.
  │ exit code: 1
  ╰─> [1 lines of output]
      ModuleNotFoundError: No module named 'distutils'
      [end of output]

Installing collected packages: urllib3, charset-normalizer, requests
Successfully installed charset-normalizer-3.3.2 requests-2.32.3 urllib3-2.2.2
WARNING: Running pip as the 'root' user can result in broken permissions.
"""

NPM_INSTALL = """\
npm WARN deprecated inflight@1.0.6: This module is not supported, and leaks memory.
npm WARN deprecated glob@7.2.3: Glob versions prior to v9 are no longer supported
npm http fetch GET 200 https://registry.npmjs.org/react 112ms (cache revalidated)
npm http fetch GET 200 https://registry.npmjs.org/react-dom 98ms (cache revalidated)
npm timing reify:loadTrees Completed in 812ms
npm timing reify:audit Completed in 1204ms
⠙ reify:react-dom: timing reifyNode:node_modules/react-dom Completed in 320ms

added 1342 packages, and audited 1343 packages in 18s

212 packages are looking for funding
  run `npm fund` for details

8 vulnerabilities (2 low, 4 moderate, 2 high)

To address issues that do not require attention, run:
  npm audit fix

npm ERR! code ERESOLVE
npm ERR! ERESOLVE could not resolve
"""

CARGO_BUILD = """\
    Updating crates.io index
     Locking 42 packages to latest compatible versions
  Downloaded serde_derive v1.0.204
  Downloaded syn v2.0.72
  Downloaded 2 crates (412.3 KB) in 0.61s
   Compiling proc-macro2 v1.0.86
   Compiling unicode-ident v1.0.12
   Compiling syn v2.0.72
   Compiling app v0.1.0 (/work/app)
warning: unused variable: `count`
  --> src/main.rs:12:9
   |
12 |     let count = 3;
   |         ^^^^^ help: if this is intentional, prefix it with an underscore: `_count`
   |
   = note: `#[warn(unused_variables)]` on by default

error[E0308]: mismatched types
  --> src/lib.rs:40:5
   |
40 |     "three"
   |     ^^^^^^^ expected `u32`, found `&str`

error: could not compile `app` (lib) due to 1 previous error; 1 warning emitted
"""

GIT_STATUS = """\
On branch feature/cart
Your branch is ahead of 'origin/feature/cart' by 2 commits.
  (use "git push" to publish your local commits)

Changes to be committed:
  (use "git restore --staged <file>..." to unstage)
\tmodified:   src/cart.ts

Changes not staged for commit:
  (use "git add <file>..." to update what will be committed)
  (use "git restore <file>..." to discard changes in working directory)
\tmodified:   src/components/Cart.tsx
\tdeleted:    src/legacy/old.ts

Untracked files:
  (use "git add <file>..." to include in what will be committed)
\tsrc/components/Total.tsx

"""

GIT_DIFF = """\
diff --git a/src/cart.ts b/src/cart.ts
index 3b18e51..a9c4f2d 100644
--- a/src/cart.ts
+++ b/src/cart.ts
@@ -10,7 +10,7 @@ export function total(items: Item[]): number {
   let sum = 0;
   for (const item of items) {
-    sum += item.price;
+    sum += item.price * item.quantity;\x20\x20
   }
   return sum;
 }
diff --git a/src/new.ts b/src/new.ts
new file mode 100644
index 0000000..e69de29
"""

GIT_LOG = """\
commit 9f3c2a1b7e4d5f60718293a4b5c6d7e8f9012345 (HEAD -> main, origin/main)
Author: Ann Smith <ann@example.com>
Date:   Mon Jul 1 12:00:00 2024 +0200

    Fix cart total for quantities

    The total ignored item.quantity.

commit 1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d
Merge: 5e6f708 9a0b1c2
Author: Bob Jones <bob@example.com>
Date:   Sun Jun 30 09:30:00 2024 +0200

    Merge branch 'feature/login'
"""

LS_LONG = """\
total 96
drwxr-xr-x  9 ann staff   288 Jul  1 12:00 .
drwxr-xr-x 24 ann staff   768 Jun 30 09:12 ..
-rw-r--r--  1 ann staff   412 Jul  1 11:58 .gitignore
-rw-r--r--  1 ann staff  1834 Jul  1 11:58 README.md
-rwxr-xr-x  1 ann staff   220 Jun 12  2023 build.sh
drwxr-xr-x  5 ann staff   160 Jul  1 11:59 docs
-rw-r--r--  1 ann staff 52311 Jul  1 12:00 package-lock.json
-rw-r--r--  1 ann staff   932 Jul  1 12:00 package.json
drwxr-xr-x 12 ann staff   384 Jul  1 12:00 src
lrwxr-xr-x  1 ann staff    11 Jul  1 12:00 latest -> build/1.2.3
"""


def find_output() -> str:
    """``find . -name '*.js'`` in a project with installed dependencies."""
    lines = ["./src/index.js", "./src/cart.js"]
    lines += [f"./node_modules/pkg{i}/lib/file{j}.js" for i in range(40) for j in range(5)]
    lines += ["./test/cart.test.js"]
    lines += [f"./.venv/lib/python3.11/site-packages/x/m{i}.js" for i in range(30)]
    lines += ["./scripts/build.js"]
    return "\n".join(lines) + "\n"


def tree_output() -> str:
    """``tree -a`` of a project with ``node_modules`` and ``.git``."""
    lines = [".", "├── .git"]
    lines += [f"│   ├── obj{i}" for i in range(30)]
    lines += ["│   └── HEAD", "├── node_modules", "│   ├── react", "│   │   ├── index.js"]
    lines += [f"│   │   └── cjs{i}.js" for i in range(20)]
    lines += ["│   └── zod", "│       └── index.js", "├── package.json", "└── src"]
    lines += ["    ├── index.ts", "    └── node_modules", "        └── local.js", ""]
    lines += ["8 directories, 61 files"]
    return "\n".join(lines) + "\n"


def grep_output() -> str:
    """``grep -rn TODO .``: one file with many matches between others, and binary notices."""
    lines = ["src/a.py:3:# TODO: split", "src/a.py:9:# TODO: rename"]
    lines += [f"src/generated/big.py:{n}:    value_{n} = TODO" for n in range(1, 181)]
    lines += ["Binary file assets/logo.png matches", "Binary file assets/font.woff matches"]
    lines += ["src/z.py:120:    # TODO: remove after 2.0"]
    return "\n".join(lines) + "\n"


TSC = """\
src/cart.ts(12,5): error TS2322: Type 'string' is not assignable to type 'number'.
src/cart.ts(30,11): error TS2339: Property 'qty' does not exist on type 'Item'.
src/api/client.ts(7,1): error TS1005: ';' expected.

Found 3 errors in 2 files.

Errors  Files
     2  src/cart.ts:12
     1  src/api/client.ts:7
"""

MYPY = """\
app/db.py:41: error: Incompatible types in assignment (expression has type "str", variable has type "int")  [assignment]
app/db.py:58: note: See https://mypy.rtfd.io/en/stable/_refs.html#code-union-attr for more info
app/api.py:12: error: Missing return statement  [return]
Found 2 errors in 2 files (checked 31 source files)
"""

RUFF = """\
app/db.py:1:8: F401 [*] `os` imported but unused
app/api.py:22:5: E722 Do not use bare `except`
app/api.py:30:80: E501 Line too long (104 > 100)
Found 3 errors.
[*] 1 fixable with the `--fix` option.
"""

ESLINT = """\
/work/web/src/components/Cart.tsx
   12:7   error    'unused' is assigned a value but never used  @typescript-eslint/no-unused-vars
   40:3   warning  Unexpected console statement                  no-console

/work/web/src/utils/format.ts
  3:10  error  Parsing error: Unexpected token

✖ 3 problems (2 errors, 1 warning)
"""

JSON_PRETTY = """\
{
  "id": 1234567890123456789012,
  "name": "Zoë \\u00e9 \\u4e2d",
  "price": 12.50,
  "tags": [
    "a",
    "a",
    "a"
  ],
  "nested": {"z": 1, "a": 2}
}
"""
