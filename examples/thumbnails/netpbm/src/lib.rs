//! Binary netpbm images, the two simplest image formats there are: PGM (`P5`, gray) and PPM
//! (`P6`, RGB). A header of ASCII tokens (magic, width, height, maxval; `#` comments allowed
//! between them) ends in one whitespace byte, then the raster follows: rows top to bottom,
//! one byte per sample when maxval < 256, else two bytes, big-endian.
//!
//! Pure Rust with no dependencies, so `cargo test -p netpbm` runs on the host.

use std::fmt;

/// Longest header accepted, comments included: a reader needs no more than this many bytes
/// to learn an image's size (the catalog function reads just this much of each thumbnail).
pub const MAX_HEADER_BYTES: usize = 4096;

/// Which of the two formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `P5`: one gray sample per pixel.
    Pgm,
    /// `P6`: red, green and blue samples per pixel.
    Ppm,
}

impl Format {
    /// Samples per pixel.
    pub fn channels(self) -> usize {
        match self {
            Format::Pgm => 1,
            Format::Ppm => 3,
        }
    }

    /// The magic number that starts a file of this format.
    pub fn magic(self) -> &'static str {
        match self {
            Format::Pgm => "P5",
            Format::Ppm => "P6",
        }
    }

    /// The media type to store a file of this format with.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Pgm => "image/x-portable-graymap",
            Format::Ppm => "image/x-portable-pixmap",
        }
    }
}

/// What an image's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// PGM or PPM.
    pub format: Format,
    /// Pixels per row (at least 1).
    pub width: u32,
    /// Rows (at least 1).
    pub height: u32,
    /// The largest sample value, 1 to 65535.
    pub maxval: u16,
    /// Where the raster starts in the file.
    pub raster_offset: usize,
}

impl Header {
    /// Bytes per sample.
    pub fn sample_bytes(&self) -> usize {
        if self.maxval < 256 {
            1
        } else {
            2
        }
    }

    /// Bytes the raster takes, or `None` when that does not fit in `usize`.
    pub fn raster_bytes(&self) -> Option<usize> {
        (self.width as usize)
            .checked_mul(self.height as usize)?
            .checked_mul(self.format.channels())?
            .checked_mul(self.sample_bytes())
    }
}

/// Why bytes are not an image this crate reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The file does not start with `P5` or `P6`.
    NotNetpbm,
    /// The header ends before its last token (or passes [`MAX_HEADER_BYTES`]).
    TruncatedHeader,
    /// A header token is not what belongs there.
    BadHeader(String),
    /// The raster is shorter than the header promises.
    TruncatedRaster {
        /// Bytes the header promises.
        expected: usize,
        /// Bytes there are.
        found: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotNetpbm => write!(
                f,
                "not a binary PGM or PPM image: the file must start with \"P5\" or \"P6\" \
                 (ASCII P2/P3 images can be converted with `pnmtopnm` or ImageMagick)"
            ),
            Error::TruncatedHeader => write!(
                f,
                "the header is incomplete: it needs width, height and maxval within the first \
                 {MAX_HEADER_BYTES} bytes"
            ),
            Error::BadHeader(why) => write!(f, "bad header: {why}"),
            Error::TruncatedRaster { expected, found } => write!(
                f,
                "the raster holds {found} bytes but the header promises {expected}: the file \
                 was cut short"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// Reads the header at the start of `bytes`; the raster itself may be missing.
pub fn parse_header(bytes: &[u8]) -> Result<Header, Error> {
    let format = match bytes.get(..2) {
        Some(b"P5") => Format::Pgm,
        Some(b"P6") => Format::Ppm,
        Some(_) => return Err(Error::NotNetpbm),
        None if b"P".starts_with(bytes) && !bytes.is_empty() => return Err(Error::TruncatedHeader),
        None => return Err(Error::NotNetpbm),
    };
    let window = &bytes[..bytes.len().min(MAX_HEADER_BYTES)];
    let mut at = 2;
    // The magic must be followed by whitespace (or a comment) like every other token.
    match window.get(at) {
        Some(b) if b.is_ascii_whitespace() || *b == b'#' => {}
        Some(_) => return Err(Error::NotNetpbm),
        None => return Err(Error::TruncatedHeader),
    }
    let width = number(window, &mut at, "width", u32::MAX.into())?;
    let height = number(window, &mut at, "height", u32::MAX.into())?;
    let maxval = number(window, &mut at, "maxval", u16::MAX.into())?;
    if width == 0 || height == 0 {
        return Err(Error::BadHeader(format!(
            "the image is {width}x{height}: both sides must be at least 1 pixel"
        )));
    }
    if maxval == 0 {
        return Err(Error::BadHeader(
            "maxval is 0: it must be 1 to 65535".into(),
        ));
    }
    // Exactly one whitespace byte separates maxval from the raster.
    match window.get(at) {
        Some(b) if b.is_ascii_whitespace() => {}
        Some(_) => {
            return Err(Error::BadHeader(
                "maxval must be followed by one whitespace byte".into(),
            ));
        }
        None => return Err(Error::TruncatedHeader),
    }
    Ok(Header {
        format,
        width: width as u32,
        height: height as u32,
        maxval: maxval as u16,
        raster_offset: at + 1,
    })
}

/// Skips whitespace and comments from `at`, then reads one decimal number of at most `max`.
fn number(bytes: &[u8], at: &mut usize, what: &str, max: u64) -> Result<u64, Error> {
    loop {
        match bytes.get(*at) {
            Some(b) if b.is_ascii_whitespace() => *at += 1,
            Some(b'#') => {
                let rest = &bytes[*at..];
                let end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
                *at += end.ok_or(Error::TruncatedHeader)?;
            }
            Some(_) => break,
            None => return Err(Error::TruncatedHeader),
        }
    }
    let start = *at;
    let mut value: u64 = 0;
    while let Some(&b) = bytes.get(*at).filter(|b| b.is_ascii_digit()) {
        value = value * 10 + u64::from(b - b'0');
        if value > max {
            return Err(Error::BadHeader(format!("{what} is larger than {max}")));
        }
        *at += 1;
    }
    if *at == start {
        return Err(Error::BadHeader(format!(
            "expected the {what} as a decimal number at byte {start}"
        )));
    }
    if *at == bytes.len() {
        // The number may go on past the bytes we have.
        return Err(Error::TruncatedHeader);
    }
    Ok(value)
}

/// The header of a thumbnail and the thumbnail file itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbnail {
    /// The thumbnail's header (same format and maxval as the source).
    pub header: Header,
    /// The encoded file.
    pub bytes: Vec<u8>,
}

/// Shrinks the image in `bytes` by `factor` on each side with a box filter: each output pixel
/// is the rounded mean of a `factor`×`factor` block of input pixels. Sides that are not a
/// multiple of `factor` round up, the last block averaging the pixels it has, so no input
/// pixel is dropped. Memory use is the output plus one row of sums.
pub fn downsample(bytes: &[u8], factor: u32) -> Result<Thumbnail, Error> {
    let source = parse_header(bytes)?;
    let expected = source.raster_bytes().ok_or_else(|| {
        Error::BadHeader(format!(
            "{}x{} pixels is too large",
            source.width, source.height
        ))
    })?;
    let raster = &bytes[source.raster_offset..];
    if raster.len() < expected {
        return Err(Error::TruncatedRaster {
            expected,
            found: raster.len(),
        });
    }
    let factor = factor.max(1);
    let (width, height) = (source.width as usize, source.height as usize);
    let out_width = width.div_ceil(factor as usize);
    let out_height = height.div_ceil(factor as usize);
    let channels = source.format.channels();
    let sample_bytes = source.sample_bytes();
    let mut out = format!(
        "{}\n{} {}\n{}\n",
        source.format.magic(),
        out_width,
        out_height,
        source.maxval
    )
    .into_bytes();
    let header = Header {
        width: out_width as u32,
        height: out_height as u32,
        raster_offset: out.len(),
        ..source
    };
    out.reserve(out_width * out_height * channels * sample_bytes);

    let sample = |index: usize| -> u64 {
        let at = index * sample_bytes;
        if sample_bytes == 1 {
            u64::from(raster[at])
        } else {
            u64::from(u16::from_be_bytes([raster[at], raster[at + 1]]))
        }
    };
    let mut sums = vec![0u64; out_width * channels];
    let factor = factor as usize;
    for block_row in 0..out_height {
        sums.iter_mut().for_each(|s| *s = 0);
        let rows = (block_row * factor)..((block_row + 1) * factor).min(height);
        let block_height = rows.len() as u64;
        for y in rows {
            for x in 0..width {
                for c in 0..channels {
                    sums[(x / factor) * channels + c] += sample((y * width + x) * channels + c);
                }
            }
        }
        for (i, sum) in sums.iter().enumerate() {
            let block_x = i / channels;
            let block_width = (width - block_x * factor).min(factor) as u64;
            let count = block_width * block_height;
            let mean = (sum + count / 2) / count;
            if sample_bytes == 1 {
                out.push(mean as u8);
            } else {
                out.extend_from_slice(&(mean as u16).to_be_bytes());
            }
        }
    }
    Ok(Thumbnail { header, bytes: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pgm(
        width: usize,
        height: usize,
        maxval: u16,
        pixel: impl Fn(usize, usize) -> u16,
    ) -> Vec<u8> {
        let mut bytes = format!("P5\n{width} {height}\n{maxval}\n").into_bytes();
        for y in 0..height {
            for x in 0..width {
                let v = pixel(x, y);
                if maxval < 256 {
                    bytes.push(v as u8);
                } else {
                    bytes.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
        bytes
    }

    #[test]
    fn reads_headers_with_comments_and_any_whitespace() {
        let h = parse_header(b"P6 # made by hand\n  12\t# width\n7\r\n255\nxyz").unwrap();
        assert_eq!(
            (h.format, h.width, h.height, h.maxval),
            (Format::Ppm, 12, 7, 255)
        );
        assert_eq!(
            &b"P6 # made by hand\n  12\t# width\n7\r\n255\nxyz"[h.raster_offset..],
            b"xyz"
        );
        assert_eq!(h.raster_bytes(), Some(12 * 7 * 3));
    }

    #[test]
    fn refuses_what_is_not_a_binary_image() {
        assert_eq!(parse_header(b"P2\n1 1\n255\n0"), Err(Error::NotNetpbm));
        assert_eq!(parse_header(b"\x89PNG\r\n"), Err(Error::NotNetpbm));
        assert_eq!(parse_header(b""), Err(Error::NotNetpbm));
        assert_eq!(parse_header(b"P5\n3"), Err(Error::TruncatedHeader));
        assert_eq!(parse_header(b"P5\n3 2\n255"), Err(Error::TruncatedHeader));
        assert!(matches!(
            parse_header(b"P5\n0 2\n255\n"),
            Err(Error::BadHeader(_))
        ));
        assert!(matches!(
            parse_header(b"P5\n2 2\n0\n"),
            Err(Error::BadHeader(_))
        ));
        assert!(matches!(
            parse_header(b"P5\n2 2\n65536\n"),
            Err(Error::BadHeader(_))
        ));
        assert!(matches!(
            parse_header(b"P5\nab 2\n255\n"),
            Err(Error::BadHeader(_))
        ));
        let long_comment = format!("P5\n#{}\n1 1\n255\n\0", "x".repeat(MAX_HEADER_BYTES));
        assert_eq!(
            parse_header(long_comment.as_bytes()),
            Err(Error::TruncatedHeader)
        );
    }

    #[test]
    fn a_short_raster_is_an_error_not_a_panic() {
        let mut bytes = pgm(8, 8, 255, |_, _| 1);
        bytes.truncate(bytes.len() - 1);
        assert_eq!(
            downsample(&bytes, 4),
            Err(Error::TruncatedRaster {
                expected: 64,
                found: 63
            })
        );
    }

    #[test]
    fn averages_each_block() {
        // 8x4: the left 4x4 block is 0 and 8 alternating (mean 4), the right one all 200.
        let bytes = pgm(8, 4, 255, |x, y| {
            if x >= 4 {
                200
            } else if (x + y) % 2 == 0 {
                0
            } else {
                8
            }
        });
        let t = downsample(&bytes, 4).unwrap();
        assert_eq!((t.header.width, t.header.height), (2, 1));
        assert_eq!(t.bytes, b"P5\n2 1\n255\n\x04\xc8");
        // The result parses back to the header it claims.
        assert_eq!(parse_header(&t.bytes).unwrap(), t.header);
    }

    #[test]
    fn partial_blocks_average_the_pixels_they_have() {
        // 5x5 → 2x2: the last column and row of blocks are 1 pixel wide.
        let bytes = pgm(5, 5, 255, |x, y| if x == 4 || y == 4 { 100 } else { 10 });
        let t = downsample(&bytes, 4).unwrap();
        assert_eq!((t.header.width, t.header.height), (2, 2));
        assert_eq!(&t.bytes[t.header.raster_offset..], &[10, 100, 100, 100]);
    }

    #[test]
    fn sixteen_bit_and_color_samples() {
        let bytes = pgm(4, 4, 1000, |x, _| if x < 2 { 1000 } else { 0 });
        let t = downsample(&bytes, 4).unwrap();
        assert_eq!(&t.bytes[t.header.raster_offset..], &500u16.to_be_bytes());

        let mut ppm = b"P6\n4 4\n255\n".to_vec();
        for _ in 0..16 {
            ppm.extend_from_slice(&[255, 0, 30]);
        }
        let t = downsample(&ppm, 4).unwrap();
        assert_eq!(t.header.format, Format::Ppm);
        assert_eq!(t.bytes, b"P6\n1 1\n255\n\xff\x00\x1e");
    }
}
