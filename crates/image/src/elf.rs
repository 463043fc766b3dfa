//! Just enough of an ELF header to refuse a payload that cannot run in an
//! enclave: the architecture, and whether it needs a dynamic loader the
//! image does not hold. Everything read is bounds-checked: the file is the
//! user's.

/// The two architectures Nitro Enclaves run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The name nitro-cli gives the kernel blob of this architecture.
    pub fn kernel_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "bzImage",
            Arch::Aarch64 => "Image",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

/// What the header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Elf {
    pub arch: Arch,
    /// The dynamic loader it asks for (`PT_INTERP`), if any.
    pub interpreter: Option<String>,
}

const PT_INTERP: u32 = 3;

/// Read a 64-bit little-endian ELF executable's header.
pub fn probe(bytes: &[u8]) -> Result<Elf, String> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |o: usize| bytes.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| bytes.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    let u64_at = |o: usize| bytes.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    match u16_at(0x10) {
        Some(2) | Some(3) => {}
        _ => return Err("not an executable (ELF type is neither EXEC nor DYN)".into()),
    }
    let arch = match u16_at(0x12) {
        Some(62) => Arch::X86_64,
        Some(183) => Arch::Aarch64,
        Some(m) => return Err(format!("built for ELF machine {m}, neither x86_64 (62) nor aarch64 (183)")),
        None => unreachable!("length checked above"),
    };
    let phoff = u64_at(0x20).and_then(|v| usize::try_from(v).ok()).ok_or("program header offset out of range")?;
    let phentsize = usize::from(u16_at(0x36).unwrap_or(0));
    let phnum = usize::from(u16_at(0x38).unwrap_or(0));
    if phnum > 0 && phentsize < 56 {
        return Err(format!("program header entries of {phentsize} bytes, fewer than 56"));
    }
    let mut interpreter = None;
    for i in 0..phnum {
        let at = i.checked_mul(phentsize).and_then(|o| o.checked_add(phoff)).ok_or("program headers out of range")?;
        if at.checked_add(56).is_none_or(|end| end > bytes.len()) {
            return Err("program headers run past the end of the file".into());
        }
        let kind = u32_at(at).expect("inside the entry checked above");
        if kind != PT_INTERP {
            continue;
        }
        let off = u64_at(at + 8).and_then(|v| usize::try_from(v).ok()).ok_or("PT_INTERP out of range")?;
        let len = u64_at(at + 32).and_then(|v| usize::try_from(v).ok()).ok_or("PT_INTERP out of range")?;
        let raw = off.checked_add(len).and_then(|end| bytes.get(off..end)).ok_or("PT_INTERP runs past the end of the file")?;
        let name = raw.split(|&b| b == 0).next().unwrap_or_default();
        interpreter = Some(String::from_utf8_lossy(name).into_owned());
    }
    Ok(Elf { arch, interpreter })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(machine: u16, phdrs: &[(u32, u64, u64)], tail: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x10..0x12].copy_from_slice(&2u16.to_le_bytes());
        b[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for (kind, off, len) in phdrs {
            let mut p = vec![0u8; 56];
            p[..4].copy_from_slice(&kind.to_le_bytes());
            p[8..16].copy_from_slice(&off.to_le_bytes());
            p[32..40].copy_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&p);
        }
        b.extend_from_slice(tail);
        b
    }

    #[test]
    fn static_and_dynamic_executables() {
        let e = probe(&header(62, &[(1, 0, 0)], &[])).unwrap();
        assert_eq!(e, Elf { arch: Arch::X86_64, interpreter: None });
        let loader = b"/lib/ld-linux-aarch64.so.1\0";
        let e = probe(&header(183, &[(PT_INTERP, 64 + 56, loader.len() as u64)], loader)).unwrap();
        assert_eq!(e.arch, Arch::Aarch64);
        assert_eq!(e.interpreter.as_deref(), Some("/lib/ld-linux-aarch64.so.1"));
    }

    #[test]
    fn refusals() {
        assert!(probe(b"#!/bin/sh\n").unwrap_err().contains("not an ELF"));
        assert!(probe(&header(40, &[], &[])).unwrap_err().contains("machine 40"));
        assert!(probe(&header(62, &[(PT_INTERP, 1 << 40, 10)], &[])).unwrap_err().contains("PT_INTERP"));
        let mut h = header(62, &[(1, 0, 0)], &[]);
        h.truncate(80);
        assert!(probe(&h).unwrap_err().contains("past the end"));
    }
}
