//! Every sled database of a node (the TSDB's, the cluster's) and of the tests is opened
//! through [`open`]: sled's own threads release a directory's lock a moment after its
//! last handle is dropped, and a process that is still exiting holds it a little
//! longer, so an open that finds the lock held waits for it (bounded) instead of failing.

use std::time::{Duration, Instant};

/// How long an open waits for a held directory lock.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Opens `config`, waiting up to [`LOCK_WAIT`] while another handle holds the lock.
pub fn open(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            // sled reports a held lock as an `Other` IO error with this text.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            res => return res,
        }
    }
}

/// [`open`] of the database in `path` with sled's defaults.
pub fn open_path(path: impl AsRef<std::path::Path>) -> sled::Result<sled::Db> {
    open(&sled::Config::new().path(path))
}
