//! Long scenario tests in phases that report separately: every phase runs even when an earlier
//! one failed, prints its own result when it ends, and [`Phases::finish`] fails the test at the
//! end, listing every phase that failed with its message. A test whose setup (lab, daemons)
//! fails still panics at once: a phase is a claim about the system, the setup is not one.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;

/// The phases of one test and how each ended.
pub struct Phases {
    test: &'static str,
    results: Vec<(String, Duration, Result<(), String>)>,
}

impl Phases {
    pub fn new(test: &'static str) -> Phases {
        Phases {
            test,
            results: Vec::new(),
        }
    }

    /// Runs one phase: its assertions are caught (a panic ends the phase, not the test), its
    /// result is printed. Returns the phase's value, or None when it failed.
    pub async fn run<T>(&mut self, name: &str, phase: impl Future<Output = T>) -> Option<T> {
        println!("==== {} phase {name}", self.test);
        let t0 = Instant::now();
        let outcome = AssertUnwindSafe(phase).catch_unwind().await;
        let took = t0.elapsed();
        match outcome {
            Ok(value) => {
                println!("==== {} phase {name}: passed in {took:.1?}", self.test);
                self.results.push((name.to_string(), took, Ok(())));
                Some(value)
            }
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                println!(
                    "==== {} phase {name}: FAILED after {took:.1?}: {message}",
                    self.test
                );
                self.results.push((name.to_string(), took, Err(message)));
                None
            }
        }
    }

    /// Whether the phase called `name` ran and passed.
    pub fn passed(&self, name: &str) -> bool {
        self.results.iter().any(|(n, _, r)| n == name && r.is_ok())
    }

    /// Prints every phase's result; panics listing the failed ones, if any.
    pub fn finish(self) {
        println!("==== {}: {} phases", self.test, self.results.len());
        for (name, took, r) in &self.results {
            match r {
                Ok(()) => println!("  passed  {name} ({took:.1?})"),
                Err(_) => println!("  FAILED  {name} ({took:.1?})"),
            }
        }
        let failed: Vec<String> = self
            .results
            .iter()
            .filter_map(|(name, _, r)| r.as_ref().err().map(|m| format!("{name}: {m}")))
            .collect();
        assert!(
            failed.is_empty(),
            "{}: {} of {} phases failed:\n{}",
            self.test,
            failed.len(),
            self.results.len(),
            failed.join("\n")
        );
    }
}

/// The text of a panic's payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}
