//! A reproducible newc ("070701") cpio writer, laid out as linuxkit's writer
//! (the one nitro-cli's ramdisks come from) lays out generated entries:
//! inode numbers counted from 721, owner 0:0, one link (two for a
//! directory), device 3:1, one fixed modification time, no checksum, and a
//! `TRAILER!!!` entry padded to 512 bytes. Nothing from the build machine
//! (times, owners, inode numbers, directory order) reaches the archive.

/// linuxkit's time for the entries it generates, 2017-04-18T16:30:00Z.
pub const MTIME: u32 = 1_492_533_000;

const FIRST_INODE: u32 = 721;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

/// One entry: a directory, or a regular file with its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir { path: String, mode: u32 },
    File { path: String, mode: u32, data: Vec<u8> },
}

impl Entry {
    pub fn dir(path: &str, mode: u32) -> Entry {
        Entry::Dir { path: path.to_string(), mode }
    }

    pub fn file(path: &str, mode: u32, data: Vec<u8>) -> Entry {
        Entry::File { path: path.to_string(), mode, data }
    }

    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } => path,
        }
    }
}

/// The archive of `entries`, in the order given. The caller orders them
/// (each directory before what it holds); [`sorted`] does so.
pub fn archive(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ino = FIRST_INODE;
    for e in entries {
        let (mode, nlink, data): (u32, u32, &[u8]) = match e {
            Entry::Dir { mode, .. } => (S_IFDIR | (mode & 0o7777), 2, &[]),
            Entry::File { mode, data, .. } => (S_IFREG | (mode & 0o7777), 1, data),
        };
        header(&mut out, ino, mode, nlink, MTIME, data.len(), e.path());
        out.extend_from_slice(data);
        pad(&mut out, 4);
        ino += 1;
    }
    header(&mut out, ino, 0, 1, 0, 0, "TRAILER!!!");
    pad(&mut out, 512);
    out
}

/// `entries` sorted by path, so that each directory comes before its
/// contents and the order never depends on how they were gathered. Two
/// entries with one path are an error.
pub fn sorted(mut entries: Vec<Entry>) -> Result<Vec<Entry>, String> {
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    for w in entries.windows(2) {
        if w[0].path() == w[1].path() {
            return Err(format!("two entries for {}", w[0].path()));
        }
    }
    Ok(entries)
}

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, nlink: u32, mtime: u32, size: usize, name: &str) {
    let size = u32::try_from(size).expect("a ramdisk entry under 4 GiB (checked by the caller)");
    let namesize = name.len() as u32 + 1;
    out.extend_from_slice(b"070701");
    for field in [ino, mode, 0, 0, nlink, mtime, size, 3, 1, 0, 0, namesize, 0] {
        out.extend_from_slice(format!("{field:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad(out, 4);
}

fn pad(out: &mut Vec<u8>, to: usize) {
    while !out.len().is_multiple_of(to) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_one_file() {
        let a = archive(&[Entry::file("init", 0o755, b"abc".to_vec())]);
        assert_eq!(a.len() % 512, 0);
        assert_eq!(&a[..6], b"070701");
        let field = |i: usize| u32::from_str_radix(std::str::from_utf8(&a[6 + 8 * i..14 + 8 * i]).unwrap(), 16).unwrap();
        assert_eq!(field(0), 721);
        assert_eq!(field(1), 0o100755);
        assert_eq!(field(5), MTIME);
        assert_eq!(field(6), 3);
        assert_eq!(field(11), 5);
        // Header (110) + "init\0" (5) padded to 116, then the data.
        assert_eq!(&a[110..115], b"init\0");
        assert_eq!(&a[116..119], b"abc");
        let trailer = 120;
        assert_eq!(&a[trailer..trailer + 6], b"070701");
        assert_eq!(&a[trailer + 110..trailer + 121], b"TRAILER!!!\0");
    }

    #[test]
    fn sorting_puts_directories_first_and_refuses_duplicates() {
        let s = sorted(vec![Entry::file("a/b", 0o644, vec![]), Entry::dir("a", 0o755), Entry::file("B", 0o644, vec![])]).unwrap();
        let paths: Vec<&str> = s.iter().map(Entry::path).collect();
        assert_eq!(paths, ["B", "a", "a/b"]);
        assert!(sorted(vec![Entry::dir("a", 0o755), Entry::file("a", 0o644, vec![])]).is_err());
    }

    #[test]
    fn same_entries_same_bytes() {
        let e = vec![Entry::dir("dev", 0o755), Entry::file("init", 0o755, vec![1; 1000])];
        assert_eq!(archive(&e), archive(&e.clone()));
    }
}
