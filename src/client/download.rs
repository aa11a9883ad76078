//! The receiving end of an artifact download: one pass over the bytes.
//!
//! The network side (the actix thread) only gathers the chunks the HTTP
//! client hands it into batches of about [`BLOCK`] bytes, without copying
//! them, and hands each batch, shared, over bounded channels to two blocking
//! threads: one hashes it, the other writes it with `std::fs` (one vectored
//! write per batch). Writing every ~22 KiB network chunk through `tokio::fs`
//! cost one blocking-pool round trip per chunk, and hashing the file again
//! from disk afterwards doubled the reading; here the digest is ready when
//! the last byte is written, hashing and writing overlap, the file is synced
//! once, and memory stays bounded by about `(CHANNEL_BLOCKS + 2) * BLOCK`
//! whatever the artifact's size. SHA-256 is the one thing on the critical
//! path: the hasher has a thread to itself and never waits for the disk.

use super::ClientError;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bytes gathered before one hand-off to the hasher and the writer.
pub(super) const BLOCK: usize = 1 << 20;
/// Most chunks in one batch: a peer sending tiny chunks still makes
/// batches that one vectored write takes whole (Linux's `IOV_MAX` is 1024).
const MAX_CHUNKS: usize = 512;
/// Batches that may wait for each of the two threads: enough to keep the
/// network, the hashing and the disk busy at once, small enough to keep
/// memory flat.
const CHANNEL_BLOCKS: usize = 4;

/// The network chunks of one batch, in order, none of them empty.
type Shared = Arc<Vec<Bytes>>;

/// What the writer and the hasher have done so far.
pub(super) struct Received {
    file: File,
    hasher: Sha256,
    /// Bytes in the file, the resumed prefix included.
    pub len: u64,
}

/// A download in progress into a `.part` file.
pub(super) struct Sink {
    to_writer: mpsc::Sender<Shared>,
    to_hasher: mpsc::Sender<Shared>,
    /// The batch being gathered and its length in bytes.
    batch: Vec<Bytes>,
    batch_len: usize,
    writer: JoinHandle<io::Result<(File, u64)>>,
    hasher: JoinHandle<io::Result<Sha256>>,
}

fn io_err(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Io(format!("{what}: {e}"))
}

/// A local file failure: [`ClientError::DiskFull`] when the disk is full
/// ([`crate::error::is_disk_full`]), else [`ClientError::Io`].
pub(super) fn local_io(what: &str, e: io::Error) -> ClientError {
    if crate::error::is_disk_full(&e) {
        ClientError::DiskFull(format!("{what}: {e}"))
    } else {
        io_err(what, e)
    }
}

impl Sink {
    /// Starts the writer and the hasher on `part`. With `keep` > 0 the
    /// file's first `keep` bytes are kept and hashed first (a resumed
    /// download: the worker sends the rest); with 0 the file is created or
    /// truncated.
    pub(super) fn start(part: PathBuf, keep: u64) -> Sink {
        let (to_writer, writer_rx) = mpsc::channel(CHANNEL_BLOCKS);
        let (to_hasher, hasher_rx) = mpsc::channel(CHANNEL_BLOCKS);
        let part2 = part.clone();
        let writer = tokio::task::spawn_blocking(move || write_blocks(&part, keep, writer_rx));
        let hasher = tokio::task::spawn_blocking(move || hash_blocks(&part2, keep, hasher_rx));
        Sink { to_writer, to_hasher, batch: Vec::with_capacity(MAX_CHUNKS), batch_len: 0, writer, hasher }
    }

    /// Adds a network chunk (kept as it is, not copied); a full batch goes
    /// to both threads (waiting while either is [`CHANNEL_BLOCKS`] batches
    /// behind).
    pub(super) async fn push(&mut self, chunk: Bytes) -> Result<(), ClientError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.batch_len += chunk.len();
        self.batch.push(chunk);
        if self.batch_len >= BLOCK || self.batch.len() >= MAX_CHUNKS {
            let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(MAX_CHUNKS));
            self.batch_len = 0;
            self.send(batch).await?;
        }
        Ok(())
    }

    async fn send(&mut self, batch: Vec<Bytes>) -> Result<(), ClientError> {
        let batch = Arc::new(batch);
        // A closed channel means that thread stopped on an error; `finish`
        // reports that error, which says more than "channel closed".
        if self.to_hasher.send(batch.clone()).await.is_err() || self.to_writer.send(batch).await.is_err() {
            return Err(ClientError::Io("the download writer stopped".into()));
        }
        Ok(())
    }

    /// Hands over the last partial batch and waits for both threads: every
    /// byte received is then in the file (synced or not) and hashed.
    pub(super) async fn finish(mut self) -> Result<Received, ClientError> {
        let last = std::mem::take(&mut self.batch);
        let sent = if last.is_empty() { Ok(()) } else { self.send(last).await };
        drop(self.to_writer);
        drop(self.to_hasher);
        let written = self.writer.await.map_err(|e| io_err("writing the download", e))?;
        let hashed = self.hasher.await.map_err(|e| io_err("hashing the download", e))?;
        let (file, len) = written.map_err(|e| local_io("writing the download", e))?;
        let hasher = hashed.map_err(|e| local_io("hashing the download", e))?;
        sent.map(|()| Received { file, hasher, len })
    }
}

/// The writer: keeps the first `keep` bytes of `part`, then appends every
/// block until the channel closes. Returns the file and its length.
///
/// When the disk fills up, what was written stays for a resume, but an
/// empty `.part` file is deleted: it holds nothing to resume and would only
/// look like a download in progress.
fn write_blocks(part: &Path, keep: u64, rx: mpsc::Receiver<Shared>) -> io::Result<(File, u64)> {
    let result = append_blocks(part, keep, rx);
    if let Err(e) = &result {
        if crate::error::is_disk_full(e) && std::fs::metadata(part).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(part);
        }
    }
    result
}

fn append_blocks(part: &Path, keep: u64, mut rx: mpsc::Receiver<Shared>) -> io::Result<(File, u64)> {
    let mut file = OpenOptions::new().create(true).write(true).truncate(keep == 0).open(part)?;
    if keep > 0 {
        let have = file.metadata()?.len();
        if have < keep {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the partial download shrank to {have} of the {keep} bytes it had"),
            ));
        }
        // Whatever lies past the prefix (there should be nothing) is
        // replaced by what the worker sends from byte `keep` on.
        file.set_len(keep)?;
        file.seek(SeekFrom::Start(keep))?;
    }
    let mut len = keep;
    let mut flushed = keep;
    while let Some(batch) = rx.blocking_recv() {
        len += write_chunks(&mut file, &batch)?;
        if len - flushed >= WRITEBACK_EVERY {
            start_writeback(&file, flushed, len - flushed);
            flushed = len;
        }
    }
    Ok((file, len))
}

/// The hasher: hashes the first `keep` bytes of `part` (read back once),
/// then every block until the channel closes.
fn hash_blocks(part: &Path, keep: u64, mut rx: mpsc::Receiver<Shared>) -> io::Result<Sha256> {
    let mut hasher = Sha256::new();
    if keep > 0 {
        // Opened here, for reading only: the writer never changes the first
        // `keep` bytes, so both can work on the file at once.
        let mut file = File::open(part)?;
        hash_prefix(&mut file, keep, &mut hasher)?;
    }
    while let Some(batch) = rx.blocking_recv() {
        for chunk in batch.iter() {
            hasher.update(chunk);
        }
    }
    Ok(hasher)
}

/// Writes every chunk of a batch, in order, with as few vectored writes as
/// the file takes; returns the bytes written.
fn write_chunks(file: &mut File, chunks: &[Bytes]) -> io::Result<u64> {
    let total: usize = chunks.iter().map(Bytes::len).sum();
    // The first chunk not written whole, and how much of it is written.
    let (mut first, mut done) = (0, 0);
    let mut slices = Vec::with_capacity(chunks.len());
    while first < chunks.len() {
        slices.clear();
        slices.push(IoSlice::new(&chunks[first][done..]));
        slices.extend(chunks[first + 1..].iter().map(|c| IoSlice::new(c)));
        let mut n = match file.write_vectored(&slices) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "the file took no more bytes")),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while n > 0 && first < chunks.len() {
            let rest = chunks[first].len() - done;
            if n < rest {
                done += n;
                n = 0;
            } else {
                n -= rest;
                first += 1;
                done = 0;
            }
        }
    }
    Ok(total as u64)
}

/// Bytes written between two writeback requests.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Asks the kernel to start writing `len` bytes at `offset` to disk now,
/// without waiting: the disk then works while the rest arrives, and the one
/// `fsync` at the end only waits for the last few blocks (it took 0.3 s for
/// a whole GiB of dirty pages here). Durability still comes from that
/// `fsync`; a failure here only loses the head start, so it is ignored.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off64_t::try_from(offset), libc::off64_t::try_from(len)) else { return };
    // SAFETY: the descriptor is open for as long as `file` is borrowed, and
    // sync_file_range reads no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Elsewhere the final `fsync` does all the writing.
#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// Hashes exactly the first `len` bytes of `file`, reading from the start.
fn hash_prefix(file: &mut File, len: u64, hasher: &mut Sha256) -> io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; BLOCK];
    let mut left = len;
    while left > 0 {
        let want = left.min(BLOCK as u64) as usize;
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the partial download shrank to {} of the {len} bytes it had", len - left),
            ));
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

/// Checks a complete download against the manifest: synced once, then
/// renamed to `dest` when the digest matches, deleted when it does not.
/// Returns the digest found on a mismatch. Blocking: run it off the async
/// thread.
pub(super) fn settle(received: Received, part: &Path, dest: &Path, expected: &str) -> io::Result<Result<(), String>> {
    let Received { file, hasher, .. } = received;
    let actual = hex::encode(hasher.finalize());
    if actual != expected {
        // Closed before removing: Windows refuses to delete an open file.
        drop(file);
        std::fs::remove_file(part)?;
        return Ok(Err(actual));
    }
    file.sync_all()?;
    drop(file);
    std::fs::rename(part, dest)?;
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// Feeds `body` in uneven chunks (smaller and larger than a block).
    async fn feed(sink: &mut Sink, body: &[u8]) {
        let mut at = 0;
        let mut step = 7_000;
        while at < body.len() {
            let end = (at + step).min(body.len());
            sink.push(Bytes::copy_from_slice(&body[at..end])).await.unwrap();
            at = end;
            step = step * 3 % (3 * BLOCK) + 1;
        }
    }

    fn body(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[actix_rt::test]
    async fn a_fresh_download_is_hashed_once_while_written() {
        let dir = tempfile::tempdir().unwrap();
        let (part, dest) = (dir.path().join("a.bin.part"), dir.path().join("a.bin"));
        std::fs::write(&part, b"stale bytes from an earlier attempt").unwrap();
        let whole = body(3 * BLOCK + 12_345);
        let mut sink = Sink::start(part.clone(), 0);
        feed(&mut sink, &whole).await;
        let received = sink.finish().await.unwrap();
        assert_eq!(received.len, whole.len() as u64);
        assert_eq!(settle(received, &part, &dest, &sha(&whole)).unwrap(), Ok(()));
        assert_eq!(std::fs::read(&dest).unwrap(), whole);
        assert!(!part.exists());
    }

    /// A peer sending tiny (and empty) chunks: batches are cut by their
    /// count of chunks, and every byte lands in order.
    #[actix_rt::test]
    async fn tiny_chunks_are_batched_by_count_and_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (part, dest) = (dir.path().join("t.bin.part"), dir.path().join("t.bin"));
        let whole = body(5 * MAX_CHUNKS * 3 + 2);
        let mut sink = Sink::start(part.clone(), 0);
        for piece in whole.chunks(3) {
            sink.push(Bytes::copy_from_slice(piece)).await.unwrap();
            sink.push(Bytes::new()).await.unwrap();
        }
        let received = sink.finish().await.unwrap();
        assert_eq!(received.len, whole.len() as u64);
        assert_eq!(settle(received, &part, &dest, &sha(&whole)).unwrap(), Ok(()));
        assert_eq!(std::fs::read(&dest).unwrap(), whole);
    }

    #[actix_rt::test]
    async fn a_resumed_download_hashes_the_kept_prefix_then_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (part, dest) = (dir.path().join("b.bin.part"), dir.path().join("b.bin"));
        let whole = body(2 * BLOCK + 999);
        let keep = BLOCK + 17;
        std::fs::write(&part, &whole[..keep]).unwrap();
        let mut sink = Sink::start(part.clone(), keep as u64);
        feed(&mut sink, &whole[keep..]).await;
        let received = sink.finish().await.unwrap();
        assert_eq!(received.len, whole.len() as u64);
        assert_eq!(settle(received, &part, &dest, &sha(&whole)).unwrap(), Ok(()));
        assert_eq!(std::fs::read(&dest).unwrap(), whole);
    }

    #[actix_rt::test]
    async fn a_corrupt_prefix_fails_the_digest_and_deletes_the_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let (part, dest) = (dir.path().join("c.bin.part"), dir.path().join("c.bin"));
        let whole = body(BLOCK + 5_000);
        let keep = 4_096;
        let mut bad = whole[..keep].to_vec();
        bad[100] ^= 0xff;
        std::fs::write(&part, &bad).unwrap();
        let mut sink = Sink::start(part.clone(), keep as u64);
        feed(&mut sink, &whole[keep..]).await;
        let received = sink.finish().await.unwrap();
        let mut corrupt = whole.clone();
        corrupt[100] ^= 0xff;
        assert_eq!(settle(received, &part, &dest, &sha(&whole)).unwrap(), Err(sha(&corrupt)));
        assert!(!part.exists(), "a mismatch deletes the partial file");
        assert!(!dest.exists(), "nothing unverified under the final name");
    }

    #[actix_rt::test]
    async fn a_partial_file_shorter_than_its_prefix_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("d.bin.part");
        std::fs::write(&part, b"short").unwrap();
        let sink = Sink::start(part.clone(), 100);
        let Err(err) = sink.finish().await else { panic!("a shrunken partial file was accepted") };
        assert!(matches!(err, ClientError::Io(ref m) if m.contains("shrank")), "{err:?}");
    }

    /// A download that fills the disk fails with DISK_FULL and leaves no
    /// empty `.part` file behind.
    #[cfg(target_os = "linux")]
    #[actix_rt::test]
    async fn a_full_disk_is_disk_full_and_leaves_no_empty_part_file() {
        let Some(fs) = crate::process::test_support::Tmpfs::mount("1m") else { return };
        let filler = fs.fill();
        let part = fs.path().join("e.bin.part");
        let mut sink = Sink::start(part.clone(), 0);
        let whole = body(3 * BLOCK);
        let mut pushed = Ok(());
        for piece in whole.chunks(BLOCK / 2) {
            pushed = sink.push(Bytes::copy_from_slice(piece)).await;
            if pushed.is_err() {
                break;
            }
        }
        let err = match pushed {
            Err(_) => sink.finish().await.err().expect("the writer's error"),
            Ok(()) => sink.finish().await.err().expect("a full disk fails the download"),
        };
        assert!(matches!(err, ClientError::DiskFull(_)), "{err:?}");
        assert!(err.to_string().starts_with("DISK_FULL"), "{err}");
        assert!(!part.exists(), "an empty .part file was left behind");
        drop(filler);
    }
}
