//! A structural walk over an EIF before AWS's reader sees it. That reader
//! allocates whatever a section header claims and indexes the signature
//! list without checking it, so a damaged or hostile file would abort the
//! process; this walk refuses a section larger than the file and an empty
//! signature list with a message instead (and `describe` caps a section's
//! size, since a sparse file can be as large as it claims).

use std::io::{Read, Seek, SeekFrom};

/// The header's size, its magic and the section header's size, as the
/// format defines them.
pub const HEADER_LEN: u64 = 548;
pub const MAGIC: &[u8; 4] = b".eif";
const SECTION_HEADER_LEN: u64 = 12;
const MAX_SECTIONS: usize = 32;

/// The section types: kernel, cmdline, ramdisk, signature, metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Kernel,
    Cmdline,
    Ramdisk,
    Signature,
    Metadata,
}

/// One section as found in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub kind: Kind,
    /// Where its data starts, and how long it is.
    pub offset: u64,
    pub len: u64,
}

/// The header's fields nekms reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub version: u16,
    pub flags: u16,
    pub sections: Vec<Section>,
}

/// Walk `file` (of `len` bytes): the header, then each section header and
/// its data, each within the file; at most one signature section, which
/// must hold at least one signature.
pub fn walk<R: Read + Seek>(file: &mut R, len: u64) -> Result<Layout, String> {
    if len < HEADER_LEN {
        return Err(format!("{len} bytes: shorter than an EIF header ({HEADER_LEN})"));
    }
    let mut head = [0u8; 8];
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    file.read_exact(&mut head).map_err(|e| e.to_string())?;
    if &head[..4] != MAGIC {
        return Err("not an EIF (no \".eif\" magic)".into());
    }
    let version = u16::from_be_bytes([head[4], head[5]]);
    let flags = u16::from_be_bytes([head[6], head[7]]);
    let mut sections = Vec::new();
    let mut at = HEADER_LEN;
    while at < len {
        if sections.len() == MAX_SECTIONS {
            return Err(format!("more than {MAX_SECTIONS} sections"));
        }
        if len - at < SECTION_HEADER_LEN {
            return Err(format!("a truncated section header at byte {at}"));
        }
        let mut h = [0u8; SECTION_HEADER_LEN as usize];
        file.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
        file.read_exact(&mut h).map_err(|e| e.to_string())?;
        let kind = match u16::from_be_bytes([h[0], h[1]]) {
            1 => Kind::Kernel,
            2 => Kind::Cmdline,
            3 => Kind::Ramdisk,
            4 => Kind::Signature,
            5 => Kind::Metadata,
            t => return Err(format!("section {} at byte {at} has unknown type {t}", sections.len())),
        };
        let size = u64::from_be_bytes(h[4..12].try_into().expect("8 bytes"));
        let offset = at + SECTION_HEADER_LEN;
        if size > len - offset {
            return Err(format!("section {} ({kind:?}) claims {size} bytes, but only {} remain", sections.len(), len - offset));
        }
        sections.push(Section { kind, offset, len: size });
        at = offset + size;
    }
    let count = |k: Kind| sections.iter().filter(|s| s.kind == k).count();
    if count(Kind::Kernel) != 1 || count(Kind::Cmdline) != 1 {
        return Err("an EIF holds exactly one kernel and one command line".into());
    }
    if count(Kind::Ramdisk) == 0 {
        return Err("no ramdisk".into());
    }
    if count(Kind::Signature) > 1 || count(Kind::Metadata) > 1 {
        return Err("more than one signature or metadata section".into());
    }
    if let Some(s) = sections.iter().find(|s| s.kind == Kind::Signature) {
        // Larger than any real one (a certificate and a COSE_Sign1).
        if s.len > 1 << 20 {
            return Err(format!("a signature section of {} bytes", s.len));
        }
        let mut buf = vec![0u8; s.len as usize];
        file.seek(SeekFrom::Start(s.offset)).map_err(|e| e.to_string())?;
        file.read_exact(&mut buf).map_err(|e| e.to_string())?;
        signature_list(&buf)?;
    }
    Ok(Layout { version, flags, sections })
}

/// The signature section: a CBOR array of at least one map holding the
/// certificate and the COSE_Sign1, read by the one reader the signature
/// check and the measurement use.
fn signature_list(bytes: &[u8]) -> Result<(), String> {
    nekms_attestation::image_signature::section_fields(bytes).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn eif(sections: &[(u16, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN as usize];
        b[..4].copy_from_slice(MAGIC);
        b[4..6].copy_from_slice(&4u16.to_be_bytes());
        for (t, data) in sections {
            b.extend_from_slice(&t.to_be_bytes());
            b.extend_from_slice(&0u16.to_be_bytes());
            b.extend_from_slice(&(data.len() as u64).to_be_bytes());
            b.extend_from_slice(data);
        }
        b
    }

    fn walk_bytes(b: &[u8]) -> Result<Layout, String> {
        walk(&mut Cursor::new(b), b.len() as u64)
    }

    #[test]
    fn a_well_formed_layout() {
        let l = walk_bytes(&eif(&[(1, b"kernel"), (2, b"cmd"), (5, b"{}"), (3, b"rd1"), (3, b"rd2")])).unwrap();
        assert_eq!(l.version, 4);
        assert_eq!(l.sections.len(), 5);
        assert_eq!(l.sections[3], Section { kind: Kind::Ramdisk, offset: 548 + 12 * 4 + 6 + 3 + 2, len: 3 });
    }

    #[test]
    fn damaged_files_are_refused() {
        assert!(walk_bytes(b"short").unwrap_err().contains("shorter"));
        let mut b = eif(&[(1, b"k"), (2, b"c"), (3, b"r")]);
        b[0] = b'x';
        assert!(walk_bytes(&b).unwrap_err().contains("magic"));
        let mut b = eif(&[(1, b"k"), (2, b"c"), (3, b"r")]);
        let last = b.len() - 1 - 8;
        b[last - 1..last + 7].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(walk_bytes(&b).unwrap_err().contains("claims"));
        assert!(walk_bytes(&eif(&[(1, b"k"), (2, b"c"), (9, b"r")])).unwrap_err().contains("unknown type 9"));
        assert!(walk_bytes(&eif(&[(1, b"k"), (2, b"c")])).unwrap_err().contains("no ramdisk"));
        let empty_list = [0x80u8];
        assert!(walk_bytes(&eif(&[(1, b"k"), (2, b"c"), (3, b"r"), (4, &empty_list)])).unwrap_err().contains("no signature"));
        let mut t = eif(&[(1, b"k"), (2, b"c"), (3, b"r")]);
        t.extend_from_slice(&[0, 3, 0]);
        assert!(walk_bytes(&t).unwrap_err().contains("truncated"));
    }
}
