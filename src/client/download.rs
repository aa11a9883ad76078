//! The receiving end of an artifact download: one pass over the bytes.
//!
//! The network thread ([`super::fetch`]) reads the body straight from the
//! socket into recycled buffers of [`BLOCK`] bytes and hands each filled
//! buffer, shared and read-only, over bounded channels to two threads: one
//! hashes it, the other writes it with `std::fs`. Nothing is copied between
//! threads: the buffer goes back to the network thread's free list when the
//! slower of the two drops it. Hashing the file again from disk afterwards
//! would double the reading; here the digest is ready when the last byte is
//! written, hashing and writing overlap, the file is synced once, and
//! memory stays bounded by [`BUFFERS`] buffers whatever the artifact's size.
//! SHA-256 is the one thing on the critical path: the hasher has a thread
//! to itself and never waits for the disk.
//!
//! On Linux the writer writes whole aligned blocks with `O_DIRECT`: the disk
//! reads them from the shared buffer, and the copy into the page cache,
//! which cost as much CPU as the hash itself (a third of the process's
//! samples), is gone. The unaligned head of a resumed download and the
//! tail of the file go through the page cache, and a file system that
//! refuses `O_DIRECT` gets every block that way.
//!
//! On Linux the network thread and the writer run as `SCHED_BATCH`
//! ([`bulk_thread`]): they wake often (every read, every finished write)
//! and do little each time, and a batch thread that wakes does not preempt
//! the thread running, so the hasher keeps its core instead of being
//! interrupted by them.

use super::ClientError;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use super::part_file::{direct_handle, Output, WRITE_BATCH};

/// Bytes in one buffer: one hand-off to the hasher and the writer.
pub(super) const BLOCK: usize = 2 << 20;
/// Blocks that may wait for each of the two threads: enough to keep the
/// network, the hashing and the disk busy at once, small enough to keep
/// memory flat.
const CHANNEL_BLOCKS: usize = 4;
/// Most buffers one download allocates. A buffer is in use from the moment
/// the network thread takes it until both threads are done with it: at
/// most `CHANNEL_BLOCKS` queued plus one in hand for the slower thread, one
/// waiting to be queued, and one being filled. Two spare keep the network
/// thread from waiting on a buffer the faster thread is about to release.
const BUFFERS: usize = CHANNEL_BLOCKS + 5;

/// The alignment `O_DIRECT` asks of buffers, file offsets and lengths.
/// Only Linux writes with `O_DIRECT` (`part_file`).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(super) const ALIGN: usize = 4096;

/// A buffer of [`BLOCK`] bytes, aligned for `O_DIRECT` and in huge pages
/// where the kernel can ([`crate::memory::HugePages`]): one fault and one
/// TLB entry for a block the network, the hasher and the disk each go
/// through, and a 2 MiB `O_DIRECT` write from 4 KiB pages is 512
/// segments, more than one request of a disk that takes 254.
pub(super) type Buf = crate::memory::HugePages;

fn new_buf() -> Buf {
    Buf::new(BLOCK)
}

/// A filled buffer on its way to the hasher and the writer. Dropped by the
/// last of them, it returns to the free list it came from.
pub(super) struct Block {
    buf: Option<Buf>,
    len: usize,
    home: Sender<Buf>,
}

impl Block {
    pub(super) fn bytes(&self) -> &[u8] {
        self.buf.as_deref().map_or(&[], |b| &b[..self.len])
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // The download may be over (the free list gone): the buffer is
        // then simply freed.
        if let Some(buf) = self.buf.take() {
            let _ = self.home.send(buf);
        }
    }
}

pub(super) type Shared = Arc<Block>;

/// Marks the calling thread as bulk work (`SCHED_BATCH` on Linux, which
/// any user may ask for): it still gets its fair share of the CPU, but when
/// it wakes it waits for the next scheduling tick rather than preempting
/// the thread running. For the download's network thread and writer, so
/// that they stop taking the hasher's core away each time they wake. On
/// the 2-core test machine (five A/B runs of 1 GiB syncs, alternating) the
/// median was higher in four runs, by 4-9 %, and lower in one, by 7 %: a
/// small gain next to this machine's noise. A refusal leaves the thread as
/// it was. Elsewhere a no-op.
pub(super) fn bulk_thread() {
    #[cfg(target_os = "linux")]
    // SAFETY: changes the calling thread's scheduling policy only; the
    // parameter is a plain value read during the call.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
    }
}

/// What the writer and the hasher have done so far.
pub(super) struct Received {
    file: File,
    hasher: Sha256,
    /// Bytes in the file, the resumed prefix included.
    pub len: u64,
}

/// A download in progress into a `.part` file.
pub(super) struct Sink {
    to_writer: Option<SyncSender<Shared>>,
    to_hasher: Option<SyncSender<Shared>>,
    free_tx: Sender<Buf>,
    free_rx: Receiver<Buf>,
    /// Buffers allocated so far (at most [`BUFFERS`]).
    made: usize,
    /// Where the two threads learn how many bytes of the file to keep
    /// ([`Sink::begin`]); `None` once told.
    begin: Option<(SyncSender<u64>, SyncSender<u64>)>,
    /// Both `Some` until [`Sink::finish`] (or the drop) joins them.
    writer: Option<JoinHandle<io::Result<(File, u64)>>>,
    hasher: Option<JoinHandle<io::Result<Sha256>>>,
}

/// The writer's and the hasher's answer when the download never began:
/// no [`Sink::begin`] came before the sink was dropped.
fn not_begun() -> io::Error {
    io::Error::other("the download did not begin")
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
    /// Starts the writer and the hasher on `part` and tells them at once
    /// how much of it to keep ([`Sink::open`], then [`Sink::begin`]).
    pub(super) fn start(part: PathBuf, keep: u64) -> Result<Sink, ClientError> {
        let mut sink = Sink::open(part)?;
        sink.begin(keep);
        Ok(sink)
    }

    /// Starts the writer and the hasher on `part` before anything is known
    /// of the answer: the writer opens the file (creating it, truncating
    /// nothing) and both wait for [`Sink::begin`]. Called before the
    /// request goes out, so that opening the file and starting the threads
    /// overlap the request's round trip instead of delaying the first
    /// write: measured inside 1 GiB syncs, the writer began writing 10-23
    /// ms after the first bytes arrived when it was started after the
    /// answer's head, and the disk, busy for nearly the whole transfer, never
    /// caught up. A sink dropped without `begin` joins its threads, and a
    /// file the writer created stays only if it holds something.
    pub(super) fn open(part: PathBuf) -> Result<Sink, ClientError> {
        let (to_writer, writer_rx) = mpsc::sync_channel(CHANNEL_BLOCKS);
        let (to_hasher, hasher_rx) = mpsc::sync_channel(CHANNEL_BLOCKS);
        let (begin_writer, writer_begin) = mpsc::sync_channel(1);
        let (begin_hasher, hasher_begin) = mpsc::sync_channel(1);
        let (free_tx, free_rx) = mpsc::channel();
        let part2 = part.clone();
        let writer = std::thread::Builder::new()
            .name("download-writer".into())
            .spawn(move || write_blocks(&part, writer_begin, writer_rx))
            .map_err(|e| io_err("starting the download writer", e))?;
        let hasher = std::thread::Builder::new()
            .name("download-hasher".into())
            .spawn(move || hash_blocks(&part2, hasher_begin, hasher_rx))
            .map_err(|e| io_err("starting the download hasher", e))?;
        Ok(Sink {
            to_writer: Some(to_writer),
            to_hasher: Some(to_hasher),
            free_tx,
            free_rx,
            made: 0,
            begin: Some((begin_writer, begin_hasher)),
            writer: Some(writer),
            hasher: Some(hasher),
        })
    }

    /// Tells both threads to go: with `keep` > 0 the file's first `keep`
    /// bytes are kept and hashed first (a resumed download: the worker sends
    /// the rest); with 0 the file is emptied. Only the first call counts.
    pub(super) fn begin(&mut self, keep: u64) {
        if let Some((writer, hasher)) = self.begin.take() {
            // A thread that already stopped (the file could not be opened)
            // reports why in `finish`.
            let _ = writer.send(keep);
            let _ = hasher.send(keep);
        }
    }

    /// Makes now the buffers a transfer of `bytes` more can use (at most
    /// [`BUFFERS`]), instead of one by one as the threads fall behind: the
    /// memory a download takes then depends on its size only up to that
    /// bound, not on how the disk and the hasher kept pace this time.
    pub(super) fn expect(&mut self, bytes: u64) {
        let blocks = usize::try_from(bytes.div_ceil(BLOCK as u64)).unwrap_or(usize::MAX).saturating_add(1);
        while self.made < blocks.min(BUFFERS) {
            self.made += 1;
            let _ = self.free_tx.send(new_buf());
        }
    }

    /// An empty buffer of [`BLOCK`] bytes to read into: a recycled one when
    /// one is free, a new one while fewer than [`BUFFERS`] exist, else the
    /// next one the threads release (waiting for it).
    pub(super) fn buffer(&mut self) -> Buf {
        if let Ok(buf) = self.free_rx.try_recv() {
            return buf;
        }
        if self.made < BUFFERS {
            self.made += 1;
            return new_buf();
        }
        // `free_tx` lives in `self`, so the channel never disconnects; a
        // thread that stopped dropped its queue, which released its blocks.
        self.free_rx.recv().unwrap_or_else(|_| new_buf())
    }

    /// Hands the first `len` bytes of `buf` (from [`Sink::buffer`]) to both
    /// threads, waiting while either is [`CHANNEL_BLOCKS`] blocks behind.
    pub(super) fn send(&mut self, buf: Buf, len: usize) -> Result<(), ClientError> {
        if len == 0 {
            let _ = self.free_tx.send(buf);
            return Ok(());
        }
        let block = Arc::new(Block { buf: Some(buf), len, home: self.free_tx.clone() });
        let (Some(hasher), Some(writer)) = (&self.to_hasher, &self.to_writer) else {
            return Err(ClientError::Io("the download was already finished".into()));
        };
        // A closed channel means that thread stopped on an error; `finish`
        // reports that error, which says more than "channel closed".
        if hasher.send(block.clone()).is_err() || writer.send(block).is_err() {
            return Err(ClientError::Io("the download writer stopped".into()));
        }
        Ok(())
    }

    /// Closes the channels to both threads, which then finish what they
    /// hold and stop (or, not yet begun, stop at once).
    fn close(&mut self) {
        self.to_writer = None;
        self.to_hasher = None;
        self.begin = None;
    }

    /// Waits for both threads: every byte handed over is then in the file
    /// (synced or not) and hashed.
    pub(super) fn finish(mut self) -> Result<Received, ClientError> {
        self.close();
        let (Some(writer), Some(hasher)) = (self.writer.take(), self.hasher.take()) else {
            return Err(ClientError::Io("the download was already finished".into()));
        };
        let written = writer.join().map_err(|_| ClientError::Io("the download writer panicked".into()))?;
        let hashed = hasher.join().map_err(|_| ClientError::Io("the download hasher panicked".into()))?;
        let (file, len) = written.map_err(|e| local_io("writing the download", e))?;
        let hasher = hashed.map_err(|e| local_io("hashing the download", e))?;
        Ok(Received { file, hasher, len })
    }
}

impl Drop for Sink {
    /// Closes the channels and waits for both threads, so that nothing of
    /// this download touches the file after the sink is gone (a retry may
    /// open it next).
    fn drop(&mut self) {
        self.close();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        if let Some(h) = self.hasher.take() {
            let _ = h.join();
        }
    }
}

/// The writer: opens `part` (creating it), waits for how many of its bytes
/// to keep, keeps them, then appends every block until the channel closes.
/// Returns the file and its length.
///
/// When the disk fills up, what was written stays for a resume, but an
/// empty `.part` file is deleted: it holds nothing to resume and would only
/// look like a download in progress. The same goes for a file created here
/// for a download that never began.
fn write_blocks(part: &Path, begin: Receiver<u64>, rx: Receiver<Shared>) -> io::Result<(File, u64)> {
    bulk_thread();
    let existed = part.exists();
    let file = OpenOptions::new().create(true).write(true).truncate(false).open(part)?;
    let direct = direct_handle(part);
    let empty = |part: &Path| std::fs::metadata(part).is_ok_and(|m| m.len() == 0);
    let Ok(keep) = begin.recv() else {
        drop((file, direct));
        if !existed && empty(part) {
            let _ = std::fs::remove_file(part);
        }
        return Err(not_begun());
    };
    let result = append_blocks(file, direct, keep, rx);
    if let Err(e) = &result {
        if crate::error::is_disk_full(e) && empty(part) {
            let _ = std::fs::remove_file(part);
        }
    }
    result
}

fn append_blocks(mut file: File, direct: Option<File>, keep: u64, rx: Receiver<Shared>) -> io::Result<(File, u64)> {
    let have = file.metadata()?.len();
    if have < keep {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the partial download shrank to {have} of the {keep} bytes it had"),
        ));
    }
    // Whatever lies past the prefix (all of it for a fresh download) is
    // replaced by what the worker sends from byte `keep` on.
    if have > keep {
        file.set_len(keep)?;
    }
    file.seek(SeekFrom::Start(keep))?;
    let mut out = Output { direct, file, len: keep, flushed: keep };
    // Blocks that queued up while the disk was busy go out together, in
    // one system call (fewer, larger writes keep the disk busier).
    while let Ok(block) = rx.recv() {
        let mut batch = vec![block];
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(b) => batch.push(b),
                Err(_) => break,
            }
        }
        out.write_batch(&batch)?;
    }
    Ok((out.file, out.len))
}

/// The hasher: waits for how many bytes of `part` are kept, hashes them
/// (read back once), then every block until the channel closes.
fn hash_blocks(part: &Path, begin: Receiver<u64>, rx: Receiver<Shared>) -> io::Result<Sha256> {
    let keep = begin.recv().map_err(|_| not_begun())?;
    let mut hasher = Sha256::new();
    if keep > 0 {
        // Opened here, for reading only: the writer never changes the first
        // `keep` bytes, so both can work on the file at once.
        let mut file = File::open(part)?;
        hash_prefix(&mut file, keep, &mut hasher)?;
    }
    while let Ok(block) = rx.recv() {
        hasher.update(block.bytes());
    }
    Ok(hasher)
}

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
mod tests;
