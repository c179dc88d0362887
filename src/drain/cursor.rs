//! The drain's position, persisted in the data dir (`drain.cursor`) after every batch
//! the receivers acknowledged, so that a drain interrupted by a crash resumes where it
//! was: chunks after the cursor are sent (again, for the batch in flight — receivers
//! drop what they hold already), chunks before it never.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::storage::chunks::ExportCursor;

const FILE: &str = "drain.cursor";

/// The persisted position (`None`: nothing acknowledged yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Saved {
    version: u8,
    cursor: Option<ExportCursor>,
}

/// The cursor file of a data dir.
#[derive(Debug, Clone)]
pub struct CursorFile {
    path: PathBuf,
}

impl CursorFile {
    pub fn new(data_dir: &Path) -> CursorFile {
        CursorFile {
            path: data_dir.join(FILE),
        }
    }

    /// The saved cursor; `None` when there is none (or it cannot be read: the drain then
    /// starts over, which sends again what the receivers already hold — harmless).
    pub fn load(&self) -> Option<ExportCursor> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "drain: cannot read the cursor; starting over");
                return None;
            }
        };
        match serde_json::from_slice::<Saved>(&bytes) {
            Ok(s) if s.version == 1 => s.cursor,
            _ => {
                tracing::warn!(path = %self.path.display(), "drain: unreadable cursor; starting over");
                None
            }
        }
    }

    /// Saves `cursor` durably (written aside, fsynced, renamed over, directory fsynced).
    pub fn save(&self, cursor: Option<ExportCursor>) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let body =
            serde_json::to_vec(&Saved { version: 1, cursor }).map_err(std::io::Error::other)?;
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Removes the file (the node has left: a later drain of this data dir, as a new
    /// member, starts from the beginning).
    pub fn remove(&self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "drain: cannot remove the cursor")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_survives_a_restart_and_a_bad_file_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let f = CursorFile::new(dir.path());
        assert_eq!(f.load(), None);
        let c = ExportCursor {
            block: -7_200_000,
            series: 42,
            min_t: 1_700_000_000_000,
        };
        f.save(Some(c)).unwrap();
        assert_eq!(CursorFile::new(dir.path()).load(), Some(c));
        std::fs::write(dir.path().join(FILE), b"{garbage").unwrap();
        assert_eq!(f.load(), None);
        f.save(Some(c)).unwrap();
        f.remove();
        assert_eq!(f.load(), None);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
