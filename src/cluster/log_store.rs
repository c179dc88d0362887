//! The Raft log and vote on sled ([`LogStore`], openraft's `RaftLogStorage`).
//!
//! Trees (in the database the caller passes): `cluster.log` maps the big-endian log
//! index to an encoded entry; `cluster.meta` holds the vote, the committed log id and the
//! last purged log id (and the node id, see [`super::handle`]). Appends and votes are
//! flushed to disk before they are acknowledged, as Raft safety requires.
// openraft's trait signatures fix `StorageError` (large) as the error type; the
// helpers here return it too rather than boxing and unboxing at every call.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader, StorageIOError};

use super::codec;
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote, io_err};

pub(crate) const LOG_TREE: &str = "cluster.log";
pub(crate) const META_TREE: &str = "cluster.meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

/// sled-backed Raft log + vote. Cheap to clone (sled trees are handles).
#[derive(Clone)]
pub struct LogStore {
    log: sled::Tree,
    meta: sled::Tree,
    /// Entries dropped at open from the first corrupt one on.
    pub corrupt_dropped: u64,
}

impl LogStore {
    /// Opens (creating if needed) the log trees in `db`. A corrupt entry (one that does
    /// not decode, or names another index) is dropped with every entry after it, as if
    /// the node had crashed before writing them: the leader sends them again, or
    /// openraft purges up to the state machine's last applied entry when the log now
    /// ends below it. The committed id is moved back to the log's end when it was past.
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        let mut store = Self {
            log: db.open_tree(LOG_TREE)?,
            meta: db.open_tree(META_TREE)?,
            corrupt_dropped: 0,
        };
        store.drop_corrupt_suffix()?;
        Ok(store)
    }

    /// The first corrupt entry of the log in `db`, if any: `(its key, why)`; nothing is
    /// changed (`shoal tsdb check`; [`LogStore::open`] drops it and what follows).
    pub fn check(db: &sled::Db) -> Result<Option<(String, String)>, sled::Error> {
        let log = db.open_tree(LOG_TREE)?;
        Ok(first_corrupt(&log)?
            .0
            .map(|(k, why)| (format!("{k:?}"), why)))
    }

    fn drop_corrupt_suffix(&mut self) -> Result<(), sled::Error> {
        let (cut, last_good) = first_corrupt(&self.log)?;
        let Some((cut, why)) = cut else { return Ok(()) };
        tracing::error!(key = ?cut, error = %why, "raft log: corrupt entry; dropping it and every later entry (the leader sends them again)");
        let doomed: Vec<sled::IVec> = self.log.range(cut..).keys().collect::<Result<_, _>>()?;
        for k in &doomed {
            self.log.remove(k)?;
        }
        self.corrupt_dropped = doomed.len() as u64;
        let end = match last_good {
            Some(l) => Some(l),
            None => self
                .meta
                .get(KEY_PURGED)?
                .and_then(|b| codec::decode::<LogId>(&b).ok()),
        };
        let committed = self
            .meta
            .get(KEY_COMMITTED)?
            .and_then(|b| codec::decode::<Option<LogId>>(&b).ok().flatten());
        if committed.is_some_and(|c| Some(c.index) > end.map(|e| e.index))
            && let Ok(bytes) = codec::encode(&end)
        {
            self.meta.insert(KEY_COMMITTED, bytes)?;
        }
        self.log.flush()?;
        self.meta.flush()?;
        Ok(())
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        make: fn(openraft::AnyError) -> StorageIOError<u64>,
    ) -> Result<Option<T>, StorageError> {
        match self.meta.get(key).map_err(|e| io_err(make, e))? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes).map(Some).map_err(|e| io_err(make, e)),
        }
    }

    fn write_meta<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
        make: fn(openraft::AnyError) -> StorageIOError<u64>,
    ) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(|e| io_err(make, e))?;
        self.meta.insert(key, bytes).map_err(|e| io_err(make, e))?;
        Ok(())
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        self.read_meta(KEY_PURGED, StorageIOError::read_logs)
    }
}

/// The first entry that does not decode or names another index (with why), and the log
/// id of the last good entry before it.
#[allow(clippy::type_complexity)]
fn first_corrupt(
    log: &sled::Tree,
) -> Result<(Option<(sled::IVec, String)>, Option<LogId>), sled::Error> {
    let mut last_good = None;
    for item in log.iter() {
        let (k, v) = item?;
        let index = <[u8; 8]>::try_from(&k[..]).ok().map(u64::from_be_bytes);
        match (index, codec::decode::<Entry>(&v)) {
            (Some(i), Ok(e)) if e.log_id.index == i => last_good = Some(e.log_id),
            (_, res) => {
                let why = res
                    .err()
                    .map_or("an entry under another index".into(), |e| e.to_string());
                return Ok((Some((k, why)), last_good));
            }
        }
    }
    Ok((None, last_good))
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, StorageError> {
    codec::decode(bytes).map_err(|e| io_err(StorageIOError::read_logs, e))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => Bound::Included(i.to_be_bytes()),
            Bound::Excluded(&i) => Bound::Excluded(i.to_be_bytes()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Bound::Included(i.to_be_bytes()),
            Bound::Excluded(&i) => Bound::Excluded(i.to_be_bytes()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in self.log.range::<[u8; 8], _>((start, end)) {
            let (_, value) = item.map_err(|e| io_err(StorageIOError::read_logs, e))?;
            out.push(decode_entry(&value)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last = self
            .log
            .last()
            .map_err(|e| io_err(StorageIOError::read_logs, e))?;
        let last_log_id = match last {
            Some((_, value)) => Some(decode_entry(&value)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        self.write_meta(KEY_VOTE, vote, StorageIOError::write_vote)?;
        self.meta
            .flush_async()
            .await
            .map_err(|e| io_err(StorageIOError::write_vote, e))?;
        let took = started.elapsed();
        if took > std::time::Duration::from_millis(200) {
            tracing::warn!(?vote, ?took, "raft: saving the vote was slow");
        }
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(KEY_VOTE, StorageIOError::read_vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed on its own: losing it only means re-applying from the state machine's
        // last applied id, which openraft handles.
        self.write_meta(KEY_COMMITTED, &committed, StorageIOError::write)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .read_meta::<Option<LogId>>(KEY_COMMITTED, StorageIOError::read)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(|e| io_err(StorageIOError::write_logs, e))?;
            self.log
                .insert(entry.log_id.index.to_be_bytes(), bytes)
                .map_err(|e| io_err(StorageIOError::write_logs, e))?;
        }
        let flushed = self.log.flush_async().await;
        callback.log_io_completed(flushed.map(|_| ()).map_err(std::io::Error::other));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let keys: Vec<_> = self
            .log
            .range(log_id.index.to_be_bytes()..)
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| io_err(StorageIOError::write_logs, e))?;
        // Remove from the end so a crash in between never leaves a hole.
        for key in keys.into_iter().rev() {
            self.log
                .remove(key)
                .map_err(|e| io_err(StorageIOError::write_logs, e))?;
        }
        self.log
            .flush_async()
            .await
            .map_err(|e| io_err(StorageIOError::write_logs, e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write_meta(KEY_PURGED, &log_id, StorageIOError::write_logs)?;
        let keys: Vec<_> = self
            .log
            .range(..=log_id.index.to_be_bytes())
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| io_err(StorageIOError::write_logs, e))?;
        for key in keys {
            self.log
                .remove(key)
                .map_err(|e| io_err(StorageIOError::write_logs, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;
    use crate::cluster::state_machine::StateMachine;

    struct SledBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().map_err(|e| io_err(StorageIOError::write, e))?;
            let db = crate::storage::sled_open::open_path(dir.path())
                .map_err(|e| io_err(StorageIOError::write, e))?;
            let log = LogStore::open(&db).map_err(|e| io_err(StorageIOError::write, e))?;
            let sm = StateMachine::open(&db)?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's own storage contract tests against the sled implementation.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(SledBuilder).expect("storage suite");
    }

    #[tokio::test]
    async fn a_corrupt_entry_is_dropped_with_the_suffix_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::sled_open::open_path(dir.path()).unwrap();
        let id = |i| openraft::LogId::new(openraft::CommittedLeaderId::new(2, 1), i);
        {
            let store = LogStore::open(&db).unwrap();
            for i in 1..=5u64 {
                let e = Entry {
                    log_id: id(i),
                    payload: openraft::EntryPayload::Blank,
                };
                store
                    .log
                    .insert(i.to_be_bytes(), codec::encode(&e).unwrap())
                    .unwrap();
            }
            let mut s = store.clone();
            s.save_committed(Some(id(5))).await.unwrap();
            // Entry 3 rots on disk.
            let mut v = store.log.get(3u64.to_be_bytes()).unwrap().unwrap().to_vec();
            v.truncate(v.len() / 2);
            store.log.insert(3u64.to_be_bytes(), v).unwrap();
        }
        let mut store = LogStore::open(&db).unwrap();
        assert_eq!(store.corrupt_dropped, 3);
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(id(2)));
        let got = store.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(
            got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(store.read_committed().await.unwrap(), Some(id(2)));
    }

    #[tokio::test]
    async fn log_and_vote_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let vote = Vote::new(3, 42);
        {
            let db = crate::storage::sled_open::open_path(dir.path()).unwrap();
            let mut store = LogStore::open(&db).unwrap();
            store.save_vote(&vote).await.unwrap();
            store
                .save_committed(Some(openraft::LogId::new(
                    openraft::CommittedLeaderId::new(3, 42),
                    9,
                )))
                .await
                .unwrap();
        }
        // sled releases its file lock when its flusher thread lets go of the dropped
        // database, which may be a moment after the drop.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match crate::storage::sled_open::open_path(dir.path()) {
                Ok(db) => break db,
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
        let mut store = LogStore::open(&db).unwrap();
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));
        assert_eq!(
            store.read_committed().await.unwrap().map(|l| l.index),
            Some(9)
        );
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, None);
    }
}
