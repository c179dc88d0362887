//! The configuration as `/api/v1/status/config` shows it: every secret replaced by
//! `<secret>`, as Prometheus shows its loaded config. The file a secret is read from
//! (`password_file`, `credentials_file`, ...) is a path, shown as written.

/// Keys whose values are secrets, wherever they appear (`basic_auth.password`,
/// `authorization.credentials`, the legacy `bearer_token`, `oauth2.client_secret`, an
/// inline TLS `key`, ...).
const SECRET_KEYS: &[&str] = &[
    "password",
    "credentials",
    "bearer_token",
    "client_secret",
    "key",
    "secret",
    "secret_key",
    "token",
];

/// What Prometheus shows for a secret.
pub const SECRET: &str = "<secret>";

/// `yaml` (a loaded, valid config file) with every secret value replaced by `<secret>`.
/// Keys come out in sorted order (the file's comments and layout are not kept).
pub fn redacted_yaml(yaml: &str) -> Result<String, String> {
    let mut v: serde_json::Value = serde_saphyr::from_str_with_options(yaml, super::yaml_options())
        .map_err(|e| e.to_string())?;
    redact(&mut v);
    serde_saphyr::to_string(&v).map_err(|e| e.to_string())
}

fn redact(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if SECRET_KEYS.contains(&k.as_str()) && !x.is_null() {
                    *x = serde_json::Value::String(SECRET.into());
                } else {
                    redact(x);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_is_shown_as_secret_and_files_as_paths() {
        let yaml = "global:\n  scrape_interval: 15s\nscrape_configs:\n  - job_name: a\n    basic_auth:\n      username: u\n      password: hunter2\n    static_configs:\n      - targets: ['x:1']\n  - job_name: b\n    authorization:\n      credentials: tok-en\n    bearer_token: legacy-tok\n    tls_config:\n      key: inline-key\n  - job_name: c\n    basic_auth:\n      username: u\n      password_file: /etc/pw\n";
        let out = redacted_yaml(yaml).unwrap();
        for s in ["hunter2", "tok-en", "legacy-tok", "inline-key"] {
            assert!(!out.contains(s), "{s} leaked:\n{out}");
        }
        assert_eq!(out.matches(SECRET).count(), 4, "{out}");
        assert!(out.contains("/etc/pw"), "{out}");
        assert!(out.contains("username: u"), "{out}");
        // What is shown is still a config shoal loads.
        let back: serde_json::Value = serde_saphyr::from_str(&out).unwrap();
        assert_eq!(back["scrape_configs"][0]["job_name"], "a");
    }
}
