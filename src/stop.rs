//! Stopping a run cleanly: on SIGINT or SIGTERM, or when a stage fails, every stage stops at its
//! next boundary (the reader before its next image, the model before its next batch, the writer
//! before its next image's files), so each image's files are placed all or none. A second
//! SIGINT or SIGTERM ends the process at once: the files being written have no name yet
//! ([`crate::staged`]), so nothing is left behind.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::error::CliError;

/// Shared stop flags.
#[derive(Clone, Default)]
pub struct Stop {
    interrupt: Arc<AtomicBool>,
    terminate: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
}

impl Stop {
    /// Flags that SIGINT and SIGTERM set; a second signal exits with 130 or 143.
    pub fn install() -> Result<Stop, CliError> {
        let stop = Stop::default();
        let err = |e: std::io::Error| CliError::Usage(format!("cannot handle signals: {e}"));
        for (signal, flag, status) in [(SIGINT, &stop.interrupt, 130), (SIGTERM, &stop.terminate, 143)] {
            // Registered first, so it sees the flag the first signal set.
            signal_hook::flag::register_conditional_shutdown(signal, status, Arc::clone(flag))
                .map_err(err)?;
            signal_hook::flag::register(signal, Arc::clone(flag)).map_err(err)?;
        }
        Ok(stop)
    }

    /// Whether the stages should stop.
    pub fn requested(&self) -> bool {
        self.signal().is_some() || self.abort.load(Ordering::SeqCst)
    }

    /// The signal that asked to stop, with the exit status it implies.
    pub fn signal(&self) -> Option<(&'static str, u8)> {
        if self.interrupt.load(Ordering::SeqCst) {
            Some(("SIGINT", 130))
        } else if self.terminate.load(Ordering::SeqCst) {
            Some(("SIGTERM", 143))
        } else {
            None
        }
    }

    /// [`Stop::requested`] for core's long methods (ScoreCAM and AblationCAM ask before each
    /// extra forward pass), so that an interrupt does not wait for the whole batch's method.
    pub fn cancel(&self) -> gradcam_core::Cancel {
        let stop = self.clone();
        Arc::new(move || stop.requested())
    }

    /// Stops the other stages after a failure.
    pub fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
    }
}
