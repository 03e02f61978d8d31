//! A minimal KTAP (version 1) producer, as kselftest prints it.

use std::io::Write;

/// What a test returns: `Ok` passes, `Err(Fail)` fails, `Err(Skip)` skips.
pub enum Outcome {
    Fail(String),
    Skip(String),
}

pub type TestResult = Result<(), Outcome>;

pub struct Test {
    pub name: &'static str,
    pub run: fn(&crate::Ctx) -> TestResult,
}

/// Fails the current test with a formatted message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::ktap::Outcome::Fail(format!($($msg)+)));
        }
    };
}

/// Converts any displayable error into a test failure with context.
pub trait Context<T> {
    fn ctx(self, what: &str) -> Result<T, Outcome>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, Outcome> {
        self.map_err(|e| Outcome::Fail(format!("{what}: {e}")))
    }
}

/// Runs `tests` in order, printing KTAP, and returns whether all passed
/// or skipped.
pub fn run(ctx: &crate::Ctx, tests: &[Test]) -> bool {
    let out = std::io::stdout();
    println!("KTAP version 1");
    println!("1..{}", tests.len());
    let (mut pass, mut fail, mut skip) = (0, 0, 0);
    for (i, t) in tests.iter().enumerate() {
        let n = i + 1;
        match (t.run)(ctx) {
            Ok(()) => {
                pass += 1;
                println!("ok {n} {}", t.name);
            }
            Err(Outcome::Skip(why)) => {
                skip += 1;
                println!("ok {n} {} # SKIP {why}", t.name);
            }
            Err(Outcome::Fail(why)) => {
                fail += 1;
                for line in why.lines() {
                    println!("# {}: {line}", t.name);
                }
                println!("not ok {n} {}", t.name);
            }
        }
        let _ = out.lock().flush();
    }
    println!("# Totals: pass:{pass} fail:{fail} xfail:0 xpass:0 skip:{skip} error:0");
    fail == 0
}
