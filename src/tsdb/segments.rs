//! The WAL's files: one append-only file per segment in `<data dir>/wal/`, named by the
//! segment number as Prometheus names its WAL segments (`00000012`), holding frames
//! `len u32 LE | crc32 u32 LE | value`. Each value is one group commit (see
//! [`super::wal`] for what is inside).
//!
//! Plain files rather than a sled tree: sled rewrites a tree's whole leaf (up to 16
//! values) when it consolidates it, so a WAL kept in sled was written two to three
//! times over and its file grew and shrank by tens of megabytes with sled's segment
//! cleaning. An append-only file is written once and deleted whole at truncation.
//!
//! A crash can leave a torn last frame; reading stops at the first frame that is short
//! or fails its checksum and reports why, and the writer never appends to a segment it
//! did not create (every open starts a new segment).
//!
//! A failed write (a full disk) never leaves a torn frame in front of later ones: the
//! writer keeps the bytes written since the last successful fsync, and after a failed
//! write or fsync it cuts the file back to the last synced length and writes them again
//! before anything else ([`SegmentFiles::append`], [`SegmentFiles::synced`]). A failed
//! fsync may have dropped dirty pages without saying which, so everything since the last
//! good fsync is written again, not only the last frame.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Largest value a frame may declare (a group commit is far smaller).
const MAX_FRAME: u32 = 1 << 30;

/// The WAL directory and the segment being appended to.
#[derive(Debug)]
pub struct SegmentFiles {
    dir: PathBuf,
    open: Option<OpenSegment>,
}

/// The segment being written.
#[derive(Debug)]
struct OpenSegment {
    seg: u32,
    file: File,
    /// Length of the file up to its last successful fsync.
    synced_len: u64,
    /// Frames written since (the file's length is `synced_len + unsynced.len()` unless
    /// `repair` is set).
    unsynced: Vec<u8>,
    /// A write or fsync failed: cut the file to `synced_len` and write `unsynced` again
    /// before anything else.
    repair: bool,
}

impl OpenSegment {
    /// Restores the file to `synced_len + unsynced` after a failed write or fsync.
    fn repair(&mut self) -> io::Result<()> {
        if !self.repair {
            return Ok(());
        }
        self.file.set_len(self.synced_len)?;
        self.file.write_all(&self.unsynced)?;
        self.repair = false;
        Ok(())
    }

    /// Writes and fsyncs what is pending (before the segment is closed).
    fn sync_all_pending(&mut self) -> io::Result<()> {
        self.repair()?;
        if !self.unsynced.is_empty() {
            if let Err(e) = self.file.sync_data() {
                self.repair = true;
                return Err(e);
            }
            self.synced_len += self.unsynced.len() as u64;
            self.unsynced = Vec::new();
        }
        Ok(())
    }
}

fn seg_name(seg: u32) -> String {
    format!("{seg:08}")
}

impl SegmentFiles {
    /// Opens (creating) the WAL directory `dir`.
    pub fn open(dir: &Path) -> io::Result<SegmentFiles> {
        fs::create_dir_all(dir)?;
        Ok(SegmentFiles {
            dir: dir.to_path_buf(),
            open: None,
        })
    }

    /// The segments on disk, oldest first. Files whose names are not segment numbers
    /// are left alone.
    pub fn list(&self) -> io::Result<Vec<u32>> {
        let mut segs = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let name = e?.file_name();
            if let Some(seg) = name
                .to_str()
                .filter(|n| n.len() == 8 && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u32>().ok())
            {
                segs.push(seg);
            }
        }
        segs.sort_unstable();
        Ok(segs)
    }

    /// Calls `f` with every intact value of segment `seg`, in order. Returns why reading
    /// stopped early (a torn or corrupt frame), if it did.
    pub fn read(&self, seg: u32, f: impl FnMut(&[u8])) -> io::Result<Option<String>> {
        Ok(self.read_frames(seg, f)?.1)
    }

    /// [`SegmentFiles::read`], also returning the length of the intact frames.
    pub fn read_frames(&self, seg: u32, f: impl FnMut(&[u8])) -> io::Result<(u64, Option<String>)> {
        let r = BufReader::new(File::open(self.dir.join(seg_name(seg)))?);
        read_frame_stream(r, &mut Vec::new(), f)
    }

    /// Cuts segment `seg` to `len` bytes (`shoal tsdb check --repair` after copying
    /// the cut tail aside).
    pub fn truncate(&mut self, seg: u32, len: u64) -> io::Result<()> {
        if self.open.as_ref().is_some_and(|o| o.seg == seg) {
            self.open = None;
        }
        let f = OpenOptions::new()
            .write(true)
            .open(self.dir.join(seg_name(seg)))?;
        f.set_len(len)?;
        f.sync_all()
    }

    /// The file of segment `seg`.
    pub fn path(&self, seg: u32) -> PathBuf {
        self.dir.join(seg_name(seg))
    }

    /// Appends `value` as the next frame of segment `seg` (creating its file; the
    /// previous segment is fsynced first). Returns the bytes written. Not durable until
    /// [`SegmentFiles::sync_handle`]'s file is synced and [`SegmentFiles::synced`] told.
    /// On an error nothing of `value` stays in the file.
    pub fn append(&mut self, seg: u32, value: &[u8]) -> io::Result<u64> {
        let len = u32::try_from(value.len())
            .ok()
            .filter(|&l| l <= MAX_FRAME)
            .ok_or_else(|| io::Error::other("WAL value too large"))?;
        if self.open.as_ref().is_none_or(|o| o.seg != seg) {
            if let Some(old) = self.open.as_mut() {
                old.sync_all_pending()?;
            }
            self.open = None;
            let path = self.dir.join(seg_name(seg));
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            // Make the new file's name durable too.
            File::open(&self.dir)?.sync_all()?;
            let synced_len = file.metadata()?.len();
            self.open = Some(OpenSegment {
                seg,
                file,
                synced_len,
                unsynced: Vec::new(),
                repair: false,
            });
        }
        let Some(open) = self.open.as_mut() else {
            return Err(io::Error::other("WAL segment not open"));
        };
        open.repair()?;
        let start = open.unsynced.len();
        open.unsynced.reserve(8 + value.len());
        open.unsynced.extend_from_slice(&len.to_le_bytes());
        open.unsynced
            .extend_from_slice(&crc32fast::hash(value).to_le_bytes());
        open.unsynced.extend_from_slice(value);
        if let Err(e) = open.file.write_all(&open.unsynced[start..]) {
            // Part of the frame may be on disk: cut it away (now, or before the next
            // write), so that no torn frame can hide the frames written after it.
            open.unsynced.truncate(start);
            open.repair = true;
            let _ = open.repair();
            return Err(e);
        }
        Ok((open.unsynced.len() - start) as u64)
    }

    /// A handle to sync the segment being written (so the caller can fsync without
    /// holding its lock) with the segment and the length the sync will cover, if one is
    /// open.
    pub fn sync_handle(&self) -> io::Result<Option<(File, u32, u64)>> {
        let Some(o) = self.open.as_ref() else {
            return Ok(None);
        };
        let len = o.synced_len + o.unsynced.len() as u64;
        Ok(Some((o.file.try_clone()?, o.seg, len)))
    }

    /// Records the outcome of syncing segment `seg` up to length `len` (from
    /// [`SegmentFiles::sync_handle`]). After a failure everything since the last good
    /// sync is written again before the next frame.
    pub fn synced(&mut self, seg: u32, len: u64, ok: bool) {
        let Some(o) = self.open.as_mut().filter(|o| o.seg == seg) else {
            return;
        };
        if !ok {
            o.repair = true;
            return;
        }
        if o.repair || len <= o.synced_len {
            return;
        }
        let n = ((len - o.synced_len) as usize).min(o.unsynced.len());
        o.unsynced.drain(..n);
        if o.unsynced.capacity() > (1 << 20) {
            o.unsynced.shrink_to(1 << 20);
        }
        o.synced_len += n as u64;
    }

    /// Deletes the segments before `keep_from`. Returns how many were deleted.
    pub fn remove_before(&mut self, keep_from: u32) -> io::Result<u64> {
        let mut n = 0;
        for seg in self.list()?.into_iter().filter(|&s| s < keep_from) {
            if self.open.as_ref().is_some_and(|o| o.seg == seg) {
                self.open = None;
            }
            fs::remove_file(self.dir.join(seg_name(seg)))?;
            n += 1;
        }
        Ok(n)
    }

    /// Bytes the segment files take.
    pub fn size(&self) -> u64 {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return 0;
        };
        rd.flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }
}

/// Reads until `buf` is full or the end of the file; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// [`SegmentFiles::read`] over any reader; `value` is the buffer frames are read into.
/// Frames of a segment from any reader: calls `f` with each intact value; returns the
/// length of the intact frames and why reading stopped early, if it did.
fn read_frame_stream(
    mut r: impl Read,
    value: &mut Vec<u8>,
    mut f: impl FnMut(&[u8]),
) -> io::Result<(u64, Option<String>)> {
    let mut offset = 0u64;
    loop {
        let mut header = [0u8; 8];
        match read_full(&mut r, &mut header)? {
            0 => return Ok((offset, None)),
            8 => {}
            n => {
                return Ok((
                    offset,
                    Some(format!(
                        "torn frame header at offset {offset} ({n} of 8 bytes)"
                    )),
                ));
            }
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_FRAME {
            return Ok((
                offset,
                Some(format!("frame at offset {offset} declares {len} bytes")),
            ));
        }
        // The value grows as its bytes arrive: a header that declares more than the
        // file holds (up to 1 GiB) costs no more than the file.
        value.clear();
        let got = (&mut r).take(u64::from(len)).read_to_end(value)?;
        if got < len as usize {
            return Ok((
                offset,
                Some(format!(
                    "torn frame at offset {offset} ({got} of {len} bytes)"
                )),
            ));
        }
        if crc32fast::hash(value) != crc {
            return Ok((
                offset,
                Some(format!("checksum mismatch in frame at offset {offset}")),
            ));
        }
        f(value);
        offset += 8 + u64::from(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(s: &SegmentFiles, seg: u32) -> (Vec<Vec<u8>>, Option<String>) {
        let mut out = Vec::new();
        let stop = s.read(seg, |v| out.push(v.to_vec())).unwrap();
        (out, stop)
    }

    #[test]
    fn frames_round_trip_per_segment_and_truncate_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SegmentFiles::open(&dir.path().join("wal")).unwrap();
        assert_eq!(s.append(3, b"first").unwrap(), 13);
        s.append(3, b"").unwrap();
        s.append(4, b"second").unwrap();
        s.sync_handle().unwrap().unwrap().0.sync_data().unwrap();
        std::fs::write(dir.path().join("wal/notes.txt"), "not a segment").unwrap();
        assert_eq!(s.list().unwrap(), vec![3, 4]);
        assert_eq!(values(&s, 3), (vec![b"first".to_vec(), vec![]], None));
        assert_eq!(values(&s, 4), (vec![b"second".to_vec()], None));
        assert_eq!(s.remove_before(4).unwrap(), 1);
        assert_eq!(s.list().unwrap(), vec![4]);
        assert!(dir.path().join("wal/notes.txt").exists());
        // A reopened directory sees the same segments.
        let s2 = SegmentFiles::open(&dir.path().join("wal")).unwrap();
        assert_eq!(values(&s2, 4).0, vec![b"second".to_vec()]);
    }

    #[test]
    fn a_torn_or_corrupt_tail_keeps_what_came_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SegmentFiles::open(dir.path()).unwrap();
        s.append(1, b"kept").unwrap();
        s.append(1, b"torn away").unwrap();
        let path = dir.path().join("00000001");
        let full = std::fs::read(&path).unwrap();
        for cut in [full.len() - 1, 12 + 3, 12 + 8] {
            std::fs::write(&path, &full[..cut]).unwrap();
            let (vals, stop) = values(&s, 1);
            assert_eq!(vals, vec![b"kept".to_vec()], "cut at {cut}");
            assert!(stop.unwrap().contains("torn"), "cut at {cut}");
        }
        let mut bad = full.clone();
        *bad.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let (vals, stop) = values(&s, 1);
        assert_eq!(vals, vec![b"kept".to_vec()]);
        assert!(stop.unwrap().contains("checksum"));
        // A garbage length is refused, not allocated.
        let mut huge = full[..12].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        std::fs::write(&path, &huge).unwrap();
        let (vals, stop) = values(&s, 1);
        assert_eq!(vals, vec![b"kept".to_vec()]);
        assert!(stop.unwrap().contains("declares"));
    }

    /// Found by the `wal` fuzz target: a header declaring up to 1 GiB made the reader
    /// allocate (and zero) that much before it found the file shorter.
    #[test]
    fn a_frame_header_allocates_no_more_than_the_bytes_present() {
        let mut seg = 1u32.to_le_bytes().to_vec();
        seg.extend_from_slice(&crc32fast::hash(b"k").to_le_bytes());
        seg.push(b'k');
        seg.extend_from_slice(&MAX_FRAME.to_le_bytes());
        seg.extend_from_slice(&[0; 4]);
        seg.extend_from_slice(&[7; 100]);
        let mut value = Vec::new();
        let mut vals = Vec::new();
        let (_, stop) = read_frame_stream(&seg[..], &mut value, |v| vals.push(v.to_vec())).unwrap();
        assert_eq!(vals, vec![b"k".to_vec()]);
        assert!(stop.unwrap().contains("torn frame at offset 9 (100 of"));
        assert!(value.capacity() < 1 << 16, "{} bytes", value.capacity());
    }
}
