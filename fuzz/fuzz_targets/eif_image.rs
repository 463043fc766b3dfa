//! Any bytes as an EIF: the structural walk, the measurement and the
//! signature check either refuse them or measure every section the walk
//! found, without panicking; any bytes as an ELF header: refused or probed. (AWS's reader, which
//! `nekms image describe` runs after the walk, is not fuzzed here: it links
//! OpenSSL and is the crate's own.)
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut file = Cursor::new(data);
    if let Ok(layout) = nekms_image::eif::walk(&mut file, data.len() as u64) {
        for s in &layout.sections {
            assert!(s.offset + s.len <= data.len() as u64);
        }
        if let Ok(m) = nekms_image::pcr::measure(&mut file, &layout) {
            assert_eq!(m.pcr(0).map(str::len), Some(96));
            // The launcher's signature check refuses or passes, never panics.
            let _ = nekms_image::signature::verify(&mut file, &layout, m.pcr(0).unwrap_or_default());
        }
    }
    let _ = nekms_image::elf::probe(data);
});
