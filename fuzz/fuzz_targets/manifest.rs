//! Transfer manifests (`.ferry-manifest.json`): what a destination accepts from the other
//! host, then the chunk list it verifies against (here, against an empty directory).
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use ferry_transfer::Manifest;
use libfuzzer_sys::fuzz_target;

fn root() -> &'static Path {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    ROOT.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
        .path()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = Manifest::parse(text, Path::new(".ferry-manifest.json"), root()) else {
        return;
    };
    let _ = m.total_bytes();
    let mut n = 0usize;
    for c in m.chunks() {
        assert!(c.len > 0 && c.len <= m.chunk_size, "chunk {} has length {}", c.id(), c.len);
        n += 1;
    }
    assert_eq!(n, m.files.iter().map(|f| f.chunks.len()).sum::<usize>());
    if m.files.len() <= 16
        && let Ok(report) = m.verify(root())
    {
        // Nothing is there: nothing may be reported verified.
        assert!(report.verified.is_empty(), "chunks verified in an empty directory");
    }
});
