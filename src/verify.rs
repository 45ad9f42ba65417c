//! Check each body against the checksum its object carries (by default; `--verify` fails a
//! key that could not be checked, `--no-verify` checks nothing).
//!
//! In order of preference: the `x-amz-checksum-*` value S3 returns when the GET asks for it
//! (`x-amz-checksum-mode: ENABLED`; CRC64NVME, CRC32C, CRC32, SHA-256 or SHA-1, computed by
//! `aws-smithy-checksums`, the SDK's own implementations), else the ETag when it is a plain
//! MD5 of the content — a quoted 32-hex-digit ETag of an object not encrypted with SSE-KMS or
//! SSE-C (multipart ETags end in `-N`; encrypted objects' ETags are not the MD5 of the data).
//! Composite (multipart) checksums (`…-N`) cannot be checked against a whole body. A
//! mismatch is a transient error: the GET is retried, and the bad bytes never reach disk.

use aws_smithy_checksums::ChecksumAlgorithm;
use md5::{Digest, Md5};

/// What a response said about its content, for verification.
#[derive(Debug, Clone, Default)]
pub struct Integrity {
    pub etag: Option<String>,
    /// SSE-KMS or SSE-C: the ETag is not the MD5 of the content.
    pub encrypted: bool,
    /// `(header name, base64 value)` of the `x-amz-checksum-*` headers present.
    pub checksums: Vec<(&'static str, String)>,
}

/// The checksum headers, strongest first.
pub const CHECKSUM_HEADERS: [(&str, ChecksumAlgorithm); 5] = [
    ("x-amz-checksum-crc64nvme", ChecksumAlgorithm::Crc64Nvme),
    ("x-amz-checksum-crc32c", ChecksumAlgorithm::Crc32c),
    ("x-amz-checksum-crc32", ChecksumAlgorithm::Crc32),
    ("x-amz-checksum-sha256", ChecksumAlgorithm::Sha256),
    ("x-amz-checksum-sha1", ChecksumAlgorithm::Sha1),
];

/// How a body was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Against this checksum header.
    Checksum(&'static str),
    /// Against the ETag's MD5.
    EtagMd5,
    /// Nothing to verify against (multipart or encrypted object without a checksum), and why.
    Unverifiable(&'static str),
}

/// Checks `body`; `Err` names what did not match.
pub fn check(body: &[u8], integrity: &Integrity) -> Result<Verified, String> {
    for (name, algo) in CHECKSUM_HEADERS {
        let Some((_, want)) = integrity.checksums.iter().find(|(n, _)| *n == name) else { continue };
        if composite(want) {
            continue;
        }
        let mut c = algo.into_impl();
        c.update(body);
        // Compared as bytes: the expected value decoded once, not the computed one encoded.
        let got = c.finalize();
        return if aws_smithy_types::base64::decode(want).is_ok_and(|w| w == got) {
            Ok(Verified::Checksum(name))
        } else {
            let got = aws_smithy_types::base64::encode(&got);
            Err(format!("content does not match its {name} (got {got}, expected {want})"))
        };
    }
    match etag_md5(integrity) {
        Some(md5) => {
            let mut whole = WholeMd5::default();
            whole.update(body);
            whole.check(&md5).map(|()| Verified::EtagMd5)
        }
        None => Ok(Verified::Unverifiable(unverifiable(integrity))),
    }
}

/// What a file keeps of the checksum its body was checked against (the first whole-object
/// checksum, as [`check`] uses it): `ALGORITHM:BASE64`, e.g. `crc32c:yZRlqg==`.
pub fn kept_checksum(integrity: &Integrity) -> Option<String> {
    CHECKSUM_HEADERS.into_iter().find_map(|(name, _)| {
        let (_, value) = integrity.checksums.iter().find(|(n, _)| *n == name)?;
        (!composite(value)).then(|| format!("{}:{value}", algorithm_name(name)))
    })
}

/// `crc32c` for `x-amz-checksum-crc32c`.
fn algorithm_name(header: &str) -> &str {
    header.trim_start_matches("x-amz-checksum-")
}

/// The algorithm and base64 value of a kept checksum (`ALGORITHM:BASE64`).
pub fn parse_kept(kept: &str) -> Option<(ChecksumAlgorithm, &'static str, &str)> {
    let (name, value) = kept.split_once(':')?;
    let (header, algorithm) = CHECKSUM_HEADERS.into_iter().find(|(h, _)| algorithm_name(h) == name)?;
    Some((algorithm, header, value))
}

/// The checksum `algorithm` of everything `read` yields, base64 as S3 sends it.
pub fn checksum_of(algorithm: ChecksumAlgorithm, read: impl std::io::Read) -> std::io::Result<String> {
    let mut c = algorithm.into_impl();
    each_chunk(read, |chunk| c.update(chunk))?;
    Ok(c.header_value().to_str().unwrap_or_default().to_owned())
}

/// The MD5 (lower-case hex) of everything `read` yields.
pub fn md5_of(read: impl std::io::Read) -> std::io::Result<String> {
    let mut md5 = Md5::new();
    each_chunk(read, |chunk| md5.update(chunk))?;
    Ok(hex(&md5.finalize()))
}

/// Hands everything `read` yields to `f`, a MiB at a time.
fn each_chunk(mut read: impl std::io::Read, mut f: impl FnMut(&[u8])) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match read.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => f(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A composite checksum (`base64-N`): a checksum of a multipart upload's part checksums.
fn composite(value: &str) -> bool {
    value.contains('-')
}

/// Why a body with this integrity cannot be checked (it has no whole-object checksum, and
/// no ETag that is an MD5).
pub fn unverifiable(integrity: &Integrity) -> &'static str {
    let etag = integrity.etag.as_deref().unwrap_or_default();
    if integrity.checksums.iter().any(|(_, v)| composite(v)) {
        "its only checksum is a multipart upload's composite (base64-N), which no whole body matches"
    } else if etag.is_empty() {
        "it has no checksum and no ETag"
    } else if integrity.encrypted {
        "it has no checksum, and an encrypted object's ETag (SSE-KMS or SSE-C) is no MD5"
    } else if etag.contains('-') {
        "it has no checksum, and a multipart upload's ETag (-N) is no MD5"
    } else {
        "it has no checksum, and its ETag is no MD5"
    }
}

/// A CRC S3 keeps of a whole object (a full-object checksum: of a single-part upload, or of
/// a multipart upload made with `FULL_OBJECT`), which the CRCs of its byte ranges combine
/// into: a large object fetched in ranges is checked without reading it back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WholeCrc {
    /// The header it came in (`x-amz-checksum-crc64nvme`, `-crc32c` or `-crc32`).
    pub header: &'static str,
    algorithm: crc_fast::CrcAlgorithm,
    want: u64,
}

/// The CRCs S3 keeps, strongest first, and their width in bytes.
const CRCS: [(&str, crc_fast::CrcAlgorithm, usize); 3] = [
    ("x-amz-checksum-crc64nvme", crc_fast::CrcAlgorithm::Crc64Nvme, 8),
    ("x-amz-checksum-crc32c", crc_fast::CrcAlgorithm::Crc32Iscsi, 4),
    ("x-amz-checksum-crc32", crc_fast::CrcAlgorithm::Crc32IsoHdlc, 4),
];

impl WholeCrc {
    /// The full-object CRC among `integrity`'s checksums, if there is one (a composite
    /// `base64-N` value is a CRC of part CRCs, which ranges do not combine into).
    pub fn of(integrity: &Integrity) -> Option<WholeCrc> {
        CRCS.into_iter().find_map(|(header, algorithm, width)| {
            let (_, value) = integrity.checksums.iter().find(|(n, _)| *n == header)?;
            let bytes = aws_smithy_types::base64::decode(value).ok().filter(|b| b.len() == width)?;
            let want = bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            Some(WholeCrc { header, algorithm, want })
        })
    }

    /// What the file keeps once the check passed (see [`kept_checksum`]).
    pub fn kept(&self) -> String {
        format!("{}:{}", algorithm_name(self.header), self.base64(self.want))
    }

    /// A CRC of this algorithm as S3 sends it: its big-endian bytes (4 or 8) in base64.
    fn base64(&self, crc: u64) -> String {
        let width = if self.algorithm == crc_fast::CrcAlgorithm::Crc64Nvme { 8 } else { 4 };
        aws_smithy_types::base64::encode(&crc.to_be_bytes()[8 - width..])
    }

    /// The CRC of one range.
    pub fn of_range(&self, bytes: &[u8]) -> u64 {
        crc_fast::checksum(self.algorithm, bytes)
    }

    /// Combines the CRCs of ranges `(offset, length, crc)`, in any order, that must cover
    /// `size` bytes exactly; `Err` names both values when the whole does not match.
    pub fn check(&self, mut ranges: Vec<(u64, u64, u64)>, size: u64) -> Result<(), String> {
        ranges.sort_unstable();
        let mut at = 0;
        let mut whole = self.of_range(&[]);
        for (offset, len, crc) in ranges {
            if offset != at {
                return Err(format!("internal error: the ranges checked do not meet at byte {at}"));
            }
            whole = if at == 0 { crc } else { crc_fast::checksum_combine(self.algorithm, whole, crc, len) };
            at += len;
        }
        if at != size {
            return Err(format!("internal error: the ranges checked end at byte {at} of {size}"));
        }
        if whole == self.want {
            return Ok(());
        }
        Err(format!(
            "content does not match its {} (combined over its ranges: got {}, expected {})",
            self.header,
            self.base64(whole),
            self.base64(self.want)
        ))
    }
}

/// The MD5 an object's content must have, when its ETag is one (a plain MD5 of an object
/// not encrypted with SSE-KMS or SSE-C).
pub fn etag_md5(integrity: &Integrity) -> Option<String> {
    integrity.etag.as_deref().and_then(plain_md5).filter(|_| !integrity.encrypted)
}

/// The MD5 of content seen in pieces, in order: a large object's file read back once all its
/// parts are written, since S3 keeps no checksum of a byte range.
#[derive(Default)]
pub struct WholeMd5(Md5);

impl WholeMd5 {
    pub fn update(&mut self, piece: &[u8]) {
        self.0.update(piece);
    }

    /// `Err` names both digests when the content is not what the ETag says.
    pub fn check(self, md5: &str) -> Result<(), String> {
        let got = hex(&self.0.finalize());
        if got == md5 {
            Ok(())
        } else {
            Err(format!("content does not match its ETag MD5 (got {got}, expected {md5})"))
        }
    }
}

/// Lower-case hex of `bytes` (a digest).
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// The MD5 in an ETag that is one (`"<32 hex>"`), lower-cased.
pub(crate) fn plain_md5(etag: &str) -> Option<String> {
    let hex = etag.trim_matches('"');
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_win_over_etags_and_mismatches_are_named() {
        let body = b"hello world";
        // crc32c("hello world") = 0xc99465aa; md5 = 5eb63bbbe01eeed093cb22bb8f5acdc3
        let crc = ("x-amz-checksum-crc32c", "yZRlqg==".to_owned());
        let md5 = Some("\"5eb63bbbe01eeed093cb22bb8f5acdc3\"".to_owned());
        let i = Integrity { etag: md5.clone(), encrypted: false, checksums: vec![crc.clone()] };
        assert_eq!(check(body, &i), Ok(Verified::Checksum("x-amz-checksum-crc32c")));
        assert!(check(b"hello worle", &i).unwrap_err().contains("x-amz-checksum-crc32c"));
        let i = Integrity { etag: md5.clone(), encrypted: false, checksums: vec![] };
        assert_eq!(check(body, &i), Ok(Verified::EtagMd5));
        assert!(check(b"hello worle", &i).unwrap_err().contains("ETag MD5"));
        // Multipart ETag, encrypted object, composite checksum: nothing to check.
        let multipart = Integrity { etag: Some("\"abc-3\"".into()), ..Integrity::default() };
        assert!(matches!(check(body, &multipart), Ok(Verified::Unverifiable(why)) if why.contains("multipart")));
        let kms = Integrity { etag: md5, encrypted: true, checksums: vec![] };
        assert!(matches!(check(b"anything", &kms), Ok(Verified::Unverifiable(why)) if why.contains("encrypted")));
        let composite =
            Integrity { checksums: vec![("x-amz-checksum-crc32c", "AAAA-2".into())], ..Integrity::default() };
        assert!(matches!(check(body, &composite), Ok(Verified::Unverifiable(why)) if why.contains("composite")));
    }

    #[test]
    fn range_crcs_combine_into_the_whole_objects_crc() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for (header, algo) in CHECKSUM_HEADERS.into_iter().take(3) {
            let mut c = algo.into_impl();
            c.update(&body);
            let value = c.header_value().to_str().unwrap_or_default().to_owned();
            let integrity = Integrity { checksums: vec![(header, value)], ..Integrity::default() };
            let crc = WholeCrc::of(&integrity).expect(header);
            assert_eq!(crc.header, header);
            // Out of order, uneven, the last one short.
            let cuts = [(60_000u64, 40_000u64), (0, 25_000), (25_000, 35_000)];
            let ranges = |data: &[u8]| -> Vec<(u64, u64, u64)> {
                let at = |o: u64, l: u64| &data[o as usize..(o + l) as usize];
                cuts.iter().map(|&(o, l)| (o, l, crc.of_range(at(o, l)))).collect()
            };
            assert_eq!(crc.check(ranges(&body), body.len() as u64), Ok(()), "{header}");
            let mut bad = body.clone();
            bad[70_000] ^= 1;
            let err = crc.check(ranges(&bad), body.len() as u64).unwrap_err();
            assert!(err.contains(header) && err.contains("combined"), "{err}");
            assert!(crc.check(ranges(&body)[1..].to_vec(), body.len() as u64).is_err(), "a gap is no match");
        }
        // A composite value is a CRC of part CRCs: nothing ranges combine into.
        let composite =
            Integrity { checksums: vec![("x-amz-checksum-crc32", "AAAAAA==-3".into())], ..Integrity::default() };
        assert_eq!(WholeCrc::of(&composite), None);
    }

    #[test]
    fn a_whole_md5_in_pieces_is_the_md5_of_the_whole() {
        let md5 = "5eb63bbbe01eeed093cb22bb8f5acdc3"; // "hello world"
        let mut whole = WholeMd5::default();
        whole.update(b"hello ");
        whole.update(b"world");
        assert_eq!(whole.check(md5), Ok(()));
        let mut whole = WholeMd5::default();
        whole.update(b"hello");
        assert!(whole.check(md5).unwrap_err().contains(&format!("expected {md5}")));
    }
}
