//! Reading the local KMS's audit log (`nekms dev kms audit`): its complete
//! lines, the last N of them, and new ones as they arrive.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

/// Hand each complete line of the log at `path` to `each` (only the last
/// `last` when given); with `follow`, keep handing new lines over as they
/// are written, starting over when the log is rotated or truncated (until
/// an error).
pub fn read(path: &Path, last: Option<usize>, follow: bool, mut each: impl FnMut(&str)) -> anyhow::Result<()> {
    let file =
        std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e} (has the local KMS run with this directory?)", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut lines: Vec<String> = Vec::new();
    let mut buf = String::new();
    while reader.read_line(&mut buf)? > 0 {
        if buf.ends_with('\n') {
            lines.push(buf.trim_end().to_owned());
            buf.clear();
        }
    }
    let skip = last.map(|n| lines.len().saturating_sub(n)).unwrap_or(0);
    for l in &lines[skip..] {
        each(l);
    }
    if !follow {
        return Ok(());
    }
    loop {
        let n = reader.read_line(&mut buf)?;
        if n == 0 {
            std::thread::sleep(Duration::from_millis(200));
            // A rotated or truncated log starts over.
            let pos = reader.stream_position()?;
            if std::fs::metadata(path).map(|m| m.len() < pos).unwrap_or(false) {
                reader.seek(SeekFrom::Start(0))?;
            }
            continue;
        }
        if buf.ends_with('\n') {
            each(buf.trim_end());
            buf.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_lines_are_read_and_the_last_n_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("audit.log");
        std::fs::write(&log, "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n{\"a\":").unwrap();
        let mut seen = Vec::new();
        read(&log, Some(2), false, |l| seen.push(l.to_owned())).unwrap();
        assert_eq!(seen, ["{\"a\":2}", "{\"a\":3}"]);
    }

    #[test]
    fn a_missing_log_says_where_it_was_looked_for() {
        let err = read(Path::new("/nonexistent/audit.log"), None, false, |_| {}).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/audit.log") && err.contains("has the local KMS run"), "{err}");
    }
}
