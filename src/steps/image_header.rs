//! Reading an image's pixel size from its header, for the frames
//! FRAME_SAMPLING writes: the width and height it reports are read back from
//! the files themselves rather than predicted, so a scaling mistake shows.
//!
//! Only the two formats the step writes are understood: JPEG (the SOF
//! segment) and PNG (the IHDR chunk).

/// Width and height of a JPEG or PNG image, or `None` when `bytes` is not a
/// well-formed header of either.
pub fn image_size(bytes: &[u8]) -> Option<(u32, u32)> {
    png_size(bytes).or_else(|| jpeg_size(bytes))
}

/// PNG: the 8-byte signature, then the IHDR chunk (length 13) holding the
/// big-endian width and height.
fn png_size(b: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if b.len() < 24 || &b[..8] != SIGNATURE || &b[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(b[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(b[20..24].try_into().ok()?);
    (w > 0 && h > 0).then_some((w, h))
}

/// JPEG: walks the marker segments after SOI until a start-of-frame marker
/// (SOF0-SOF15 except DHT, JPG and DAC), whose payload is precision (1 byte),
/// height (2) and width (2).
fn jpeg_size(b: &[u8]) -> Option<(u32, u32)> {
    if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return None;
    }
    let mut i = 2;
    loop {
        // A marker is 0xFF followed by a code; extra 0xFF bytes are fill.
        if *b.get(i)? != 0xFF {
            return None;
        }
        while *b.get(i)? == 0xFF {
            i += 1;
        }
        let marker = *b.get(i)?;
        i += 1;
        // Markers without a length field.
        if marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
            continue;
        }
        if marker == 0xD9 || marker == 0xDA {
            // End of image, or start of scan before any frame header.
            return None;
        }
        let len = u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]) as usize;
        if len < 2 {
            return None;
        }
        let is_sof = (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            if len < 7 {
                return None;
            }
            let h = u16::from_be_bytes([*b.get(i + 3)?, *b.get(i + 4)?]) as u32;
            let w = u16::from_be_bytes([*b.get(i + 5)?, *b.get(i + 6)?]) as u32;
            return (w > 0 && h > 0).then_some((w, h));
        }
        i += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
        v.extend_from_slice(&w.to_be_bytes());
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        v
    }

    fn jpeg(w: u16, h: u16) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8];
        // An APP0 segment and a restart marker to walk past, with fill bytes.
        v.extend_from_slice(&[0xFF, 0xE0, 0x00, 0x06, b'J', b'F', b'I', b'F']);
        v.extend_from_slice(&[0xFF, 0xFF, 0xC4, 0x00, 0x03, 0x00]);
        v.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 0x08]);
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&w.to_be_bytes());
        v.extend_from_slice(&[0x01, 0x01, 0x11, 0x00]);
        v
    }

    #[test]
    fn reads_png_and_jpeg_headers() {
        assert_eq!(image_size(&png(320, 180)), Some((320, 180)));
        assert_eq!(image_size(&jpeg(1280, 720)), Some((1280, 720)));
    }

    #[test]
    fn rejects_broken_headers() {
        let j = jpeg(64, 48);
        for bad in [&b""[..], b"hello", &j[..j.len() - 8], &png(0, 10), &png(10, 10)[..20], &[0xFF, 0xD8, 0xFF, 0xD9]] {
            assert_eq!(image_size(bad), None, "{bad:?}");
        }
        // A SOF segment that claims a zero height.
        assert_eq!(image_size(&jpeg(64, 0)), None);
    }
}
