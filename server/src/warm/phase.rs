//! When a warm started copying: announced once, by whichever stage takes
//! the first copy task (the settler's copier or offload), and read at the
//! end for the warm's copy rate.

use std::sync::OnceLock;
use std::time::Instant;

use crate::core::operation::Phase;
use crate::progress::Progress;

/// The moment a warm's first copy task was taken, if it was.
#[derive(Default)]
pub(super) struct CopyingStarted(OnceLock<Instant>);

impl CopyingStarted {
    /// Notes that copying started, and shows the Copying phase (once per
    /// warm; later calls do nothing).
    pub fn announce(&self, progress: &Progress) {
        if self.0.get().is_some() {
            return;
        }
        let mut first = false;
        self.0.get_or_init(|| {
            first = true;
            Instant::now()
        });
        if first {
            progress.set_phase(Phase::Copying);
        }
    }

    /// When copying started.
    pub fn at(&self) -> Option<Instant> {
        self.0.get().copied()
    }
}
