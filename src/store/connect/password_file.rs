//! `database.password_file`: a password kept in a file (a mounted Secret), read again for
//! every new connection.

use std::path::PathBuf;

/// A password kept in a file (a mounted Secret), read again for every new connection so a
/// rotation needs no restart. While the file cannot be read (mid-rotation), the last
/// password read is used and a warning logged.
pub(super) struct PasswordFile {
    pub(super) path: PathBuf,
    pub(super) last: std::sync::Mutex<String>,
}

impl PasswordFile {
    pub(super) fn read(path: &std::path::Path) -> std::io::Result<String> {
        let text = std::fs::read_to_string(path)?;
        Ok(text.trim_end_matches(['\r', '\n']).to_owned())
    }

    pub(super) fn current(&self) -> String {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match Self::read(&self.path) {
            Ok(password) => *last = password,
            Err(error) => tracing::warn!(
                path = %self.path.display(),
                %error,
                "cannot read database.password_file; using the password read before"
            ),
        }
        last.clone()
    }
}
