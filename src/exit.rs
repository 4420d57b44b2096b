//! Exit statuses, in one place: what every command and every worker process returns.
//!
//! | status | meaning |
//! | --- | --- |
//! | 0 | done: every job finished (a check passed) |
//! | 1 | ran, but something failed: a trial or job failed, a validation found bad files |
//! | 2 | could not run: bad input (spec, arguments, files), an I/O or database error |
//! | 130 | cancelled by Ctrl-C or SIGTERM: workers saved checkpoints; `resume` continues |

use std::process::ExitCode;

/// How a command or worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success,
    Failed,
    Error,
    Cancelled,
}

impl Exit {
    pub const fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::Error => 2,
            Exit::Cancelled => 130,
        }
    }

    /// The exit of a worker process, as the scheduler reads it back.
    pub fn from_code(code: i32) -> Option<Self> {
        [Exit::Success, Exit::Failed, Exit::Error, Exit::Cancelled]
            .into_iter()
            .find(|e| i32::from(e.code()) == code)
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}
