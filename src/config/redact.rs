//! Secret redaction for display: passwords in URLs become `***`.

/// Replaces the password in a URL with `***`; leaves URLs without credentials untouched.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => redact_password_param(raw),
        Err(_) => "<unparseable url>".to_owned(),
    }
}

/// Redacts a `password=` query parameter (libpq also accepts the password that way).
fn redact_password_param(raw: &str) -> String {
    match raw.split_once('?') {
        Some((base, query)) => {
            let parts: Vec<String> = query
                .split('&')
                .map(|kv| {
                    if kv.to_ascii_lowercase().starts_with("password=") {
                        "password=***".to_owned()
                    } else {
                        kv.to_owned()
                    }
                })
                .collect();
            format!("{base}?{}", parts.join("&"))
        }
        None => raw.to_owned(),
    }
}
