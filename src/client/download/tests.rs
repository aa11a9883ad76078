use super::*;

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Feeds `body` in uneven blocks (never more than a buffer holds).
fn feed(sink: &mut Sink, body: &[u8]) -> Result<(), ClientError> {
    let mut at = 0;
    let mut step = 7_000;
    while at < body.len() {
        let end = (at + step).min(body.len());
        let mut buf = sink.buffer();
        assert_eq!(buf.len(), BLOCK);
        buf[..end - at].copy_from_slice(&body[at..end]);
        sink.send(buf, end - at)?;
        at = end;
        step = step * 3 % BLOCK + 1;
    }
    Ok(())
}

fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Whole blocks handed over faster than the disk takes them are written
/// in batches (one vectored write each); the file is still the body,
/// fresh or resumed from an aligned or unaligned prefix.
#[test]
fn whole_blocks_written_in_batches_make_the_same_file() {
    for keep in [0usize, BLOCK, 5_000] {
        let dir = tempfile::tempdir().unwrap();
        let (part, dest) = (dir.path().join("b.bin.part"), dir.path().join("b.bin"));
        let whole = body(9 * BLOCK + 333);
        std::fs::write(&part, &whole[..keep]).unwrap();
        let mut sink = Sink::start(part.clone(), keep as u64).unwrap();
        let mut at = keep;
        while at < whole.len() {
            // Up to the next block boundary, as the network thread does.
            let end = ((at / BLOCK + 1) * BLOCK).min(whole.len());
            let mut buf = sink.buffer();
            buf[..end - at].copy_from_slice(&whole[at..end]);
            sink.send(buf, end - at).unwrap();
            at = end;
        }
        let received = sink.finish().unwrap();
        assert_eq!(received.len, whole.len() as u64, "keep {keep}");
        assert_eq!(settle(received, &part, &dest, &sha(&whole)).unwrap(), Ok(()), "keep {keep}");
        assert!(std::fs::read(&dest).unwrap() == whole, "keep {keep}");
    }
}

#[test]
fn a_fresh_download_is_hashed_once_while_written() {
    let dir = tempfile::tempdir().unwrap();
    let (part, dest) = (dir.path().join("a.bin.part"), dir.path().join("a.bin"));
    std::fs::write(&part, b"stale bytes from an earlier attempt").unwrap();
    let whole = body(3 * BLOCK + 12_345);
    let mut sink = Sink::start(part.clone(), 0).unwrap();
    feed(&mut sink, &whole).unwrap();
    let received = sink.finish().unwrap();
    assert_eq!(received.len, whole.len() as u64);
    assert_eq!(settle(received, &part, &dest, &sha(&whole)).unwrap(), Ok(()));
    assert_eq!(std::fs::read(&dest).unwrap(), whole);
    assert!(!part.exists());
}

/// Many blocks go through a bounded set of buffers, recycled once both
/// threads are done with them, and every byte lands in order.
#[test]
fn buffers_are_recycled_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (part, dest) = (dir.path().join("t.bin.part"), dir.path().join("t.bin"));
    let whole = body(4 * BUFFERS * BLOCK + 3);
    let mut sink = Sink::start(part.clone(), 0).unwrap();
    for piece in whole.chunks(BLOCK) {
        let mut buf = sink.buffer();
        buf[..piece.len()].copy_from_slice(piece);
        sink.send(buf, piece.len()).unwrap();
    }
    assert!(sink.made <= BUFFERS, "{} buffers made", sink.made);
    let mut other = Sink::start(dir.path().join("u.bin.part"), 0).unwrap();
    other.expect(2 * BLOCK as u64 + 1);
    assert_eq!(other.made, 4, "the blocks of the transfer (three, one partial, plus one to read into)");
    other.expect(100 * BLOCK as u64);
    assert_eq!(other.made, BUFFERS, "never more than the bound");
    drop(other.finish());
    let received = sink.finish().unwrap();
    assert_eq!(received.len, whole.len() as u64);
    assert_eq!(settle(received, &part, &dest, &sha(&whole)).unwrap(), Ok(()));
    assert_eq!(std::fs::read(&dest).unwrap(), whole);
}

#[test]
fn a_resumed_download_hashes_the_kept_prefix_then_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (part, dest) = (dir.path().join("b.bin.part"), dir.path().join("b.bin"));
    let whole = body(2 * BLOCK + 999);
    let keep = BLOCK + 17;
    std::fs::write(&part, &whole[..keep]).unwrap();
    let mut sink = Sink::start(part.clone(), keep as u64).unwrap();
    feed(&mut sink, &whole[keep..]).unwrap();
    let received = sink.finish().unwrap();
    assert_eq!(received.len, whole.len() as u64);
    assert_eq!(settle(received, &part, &dest, &sha(&whole)).unwrap(), Ok(()));
    assert_eq!(std::fs::read(&dest).unwrap(), whole);
}

#[test]
fn a_corrupt_prefix_fails_the_digest_and_deletes_the_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let (part, dest) = (dir.path().join("c.bin.part"), dir.path().join("c.bin"));
    let whole = body(BLOCK + 5_000);
    let keep = 4_096;
    let mut bad = whole[..keep].to_vec();
    bad[100] ^= 0xff;
    std::fs::write(&part, &bad).unwrap();
    let mut sink = Sink::start(part.clone(), keep as u64).unwrap();
    feed(&mut sink, &whole[keep..]).unwrap();
    let received = sink.finish().unwrap();
    let mut corrupt = whole.clone();
    corrupt[100] ^= 0xff;
    assert_eq!(settle(received, &part, &dest, &sha(&whole)).unwrap(), Err(sha(&corrupt)));
    assert!(!part.exists(), "a mismatch deletes the partial file");
    assert!(!dest.exists(), "nothing unverified under the final name");
}

#[test]
fn a_partial_file_shorter_than_its_prefix_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("d.bin.part");
    std::fs::write(&part, b"short").unwrap();
    let sink = Sink::start(part.clone(), 100).unwrap();
    let Err(err) = sink.finish() else { panic!("a shrunken partial file was accepted") };
    assert!(matches!(err, ClientError::Io(ref m) if m.contains("shrank")), "{err:?}");
}

/// A download that fills the disk fails with DISK_FULL and leaves no
/// empty `.part` file behind.
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_is_disk_full_and_leaves_no_empty_part_file() {
    let Some(fs) = crate::process::test_support::Tmpfs::mount("1m") else { return };
    let filler = fs.fill();
    let part = fs.path().join("e.bin.part");
    let mut sink = Sink::start(part.clone(), 0).unwrap();
    let whole = body(3 * BLOCK);
    let fed = feed(&mut sink, &whole);
    let err = match fed {
        Err(_) => sink.finish().err().expect("the writer's error"),
        Ok(()) => sink.finish().err().expect("a full disk fails the download"),
    };
    assert!(matches!(err, ClientError::DiskFull(_)), "{err:?}");
    assert!(err.to_string().starts_with("DISK_FULL"), "{err}");
    assert!(!part.exists(), "an empty .part file was left behind");
    drop(filler);
}

#[test]
fn a_sink_dropped_before_it_began_leaves_the_file_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    // A file the sink created for a download that never began goes.
    let fresh = dir.path().join("f.bin.part");
    let sink = Sink::open(fresh.clone()).unwrap();
    drop(sink);
    assert!(!fresh.exists(), "an empty .part file was left for a download that never began");
    // A partial file from an earlier attempt stays whole: nothing is
    // truncated before the answer says how much of it to keep.
    let partial = dir.path().join("p.bin.part");
    std::fs::write(&partial, body(5000)).unwrap();
    let sink = Sink::open(partial.clone()).unwrap();
    drop(sink);
    assert_eq!(std::fs::read(&partial).unwrap(), body(5000));
    // An answer that sends everything again empties it on `begin`.
    let mut sink = Sink::open(partial.clone()).unwrap();
    sink.begin(0);
    let whole = body(BLOCK + 10);
    feed(&mut sink, &whole).unwrap();
    let got = sink.finish().unwrap();
    assert_eq!(got.len, whole.len() as u64);
    assert_eq!(hex::encode(got.hasher.finalize()), sha(&whole));
    assert_eq!(std::fs::read(&partial).unwrap(), whole);
}
