//! Loading the configuration: the embedded default, then a file, then environment variables;
//! and printing the effective configuration back as TOML, secrets hidden.

use std::{borrow::Cow, collections::BTreeSet, path::Path};

use anyhow::{Context as _, bail};
use lhttp_server::{
    Config,
    config::{REDACTED, url_without_credentials},
};
use toml::{Table, Value};

/// The commented default configuration, printed by `--print-config`.
pub const DEFAULT_CONFIG: &str = include_str!("../lhttpd.toml");

/// `default` (the commented default configuration) with a fresh random `server.api_key` and
/// `auth.hs256_secret` (32 random bytes each, as hex) and `auth.anonymous = false`.
pub fn with_fresh_secrets(default: &str) -> anyhow::Result<String> {
    let secret = || -> anyhow::Result<String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("random secret: {e}"))?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    };
    let mut text = String::from(
        "# Made by `lhttpd new-config`: fresh secrets (server.api_key, auth.hs256_secret) and\n\
         # anonymous connections off. Keep this file private. Tokens for clients:\n\
         #   lhttpd --config THIS_FILE token --user NAME\n\n",
    );
    text.push_str(default);
    let changes = [
        (
            "#   api_key = \"a-long-random-secret\"\n".to_owned(),
            format!("api_key = \"{}\"\n", secret()?),
        ),
        (
            "\nanonymous = true\n".to_owned(),
            "\nanonymous = false\n".to_owned(),
        ),
        (
            "# !!! DEFAULT: OPEN TO EVERYONE. !!!\n\
             # Out of the box lhttpd is a single-node local demo: anonymous connections are accepted and, with\n\
             # no rules below, every client may subscribe and publish to every channel. Before lhttpd faces\n\
             # any network you do not fully trust, set a key, anonymous = false and rules: see\n\
             # docs/security.md.\n"
                .to_owned(),
            "# Anonymous connections are off: a client needs a token signed with hs256_secret below\n\
             # (lhttpd --config THIS_FILE token --user NAME). With no rules below, every authenticated\n\
             # user may subscribe and publish to every channel: see docs/security.md.\n"
                .to_owned(),
        ),
        (
            "#   hs256_secret = \"at least 32 bytes of shared secret ......\"\n".to_owned(),
            format!("hs256_secret = \"{}\"\n", secret()?),
        ),
    ];
    for (from, to) in changes {
        anyhow::ensure!(
            text.matches(&from).count() == 1,
            "the default configuration has no single {from:?} to replace"
        );
        text = text.replacen(&from, &to, 1);
    }
    Ok(text)
}

/// Prefix of environment variables that override configuration keys:
/// `LHTTPD_<SECTION>__<KEY>`, e.g. `LHTTPD_LIMITS__MAX_CONNECTIONS=500`. Every variable with
/// this prefix must name a setting, a flag or one of [`OTHER_VARIABLES`]: a misspelt one would
/// otherwise leave the setting at its default without a word.
const ENV_PREFIX: &str = "LHTTPD_";

/// `LHTTPD_*` variables that are neither settings nor flags and that lhttpd may find in its
/// environment: the JavaScript SDK's tests name the binary with `LHTTPD_BIN` and pass their
/// environment on to it (docs/clients-js.md).
const OTHER_VARIABLES: &[&str] = &["LHTTPD_BIN"];

/// The process environment, as text. Variables outside lhttpd's prefix that are not UTF-8 are
/// skipped (`std::env::vars` would panic on them); one of ours that is not UTF-8 is an error.
pub fn environment() -> anyhow::Result<Vec<(String, String)>> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => vars.push((name, value)),
            (Ok(name), Err(_)) if name.starts_with(ENV_PREFIX) => {
                bail!("environment variable {name}: the value is not valid UTF-8")
            }
            (Err(name), _) if name.to_string_lossy().starts_with(ENV_PREFIX) => {
                bail!(
                    "environment variable {}: the name is not valid UTF-8",
                    name.to_string_lossy()
                )
            }
            _ => {}
        }
    }
    Ok(vars)
}

/// Builds the configuration from `file` (if any) and the `LHTTPD_<SECTION>__<KEY>` variables in
/// `env`; every error names the file, variable or key at fault. `flag_variables` are the
/// variables that command-line flags read (`LHTTPD_LISTEN`), valid without being settings.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flag_variables: &[&str],
) -> anyhow::Result<Config> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            text.parse::<Table>()
                .with_context(|| format!("config file {} is not valid TOML", path.display()))?
        }
        None => Table::new(),
    };
    let settings = setting_variables()?;
    let mut unknown = Vec::new();
    for (name, raw) in env {
        let Some(key) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let upper = name.to_ascii_uppercase();
        if flag_variables.contains(&upper.as_str()) || OTHER_VARIABLES.contains(&upper.as_str()) {
            continue;
        }
        if !settings.contains(&upper) {
            unknown.push((name.clone(), key.to_ascii_lowercase()));
            continue;
        }
        // Known names have exactly one "__" between a section and a key.
        let Some((section, field)) = key.split_once("__") else {
            continue;
        };
        let (section, field) = (section.to_ascii_lowercase(), field.to_ascii_lowercase());
        let value = env_value(&section, &field, &raw).with_context(|| {
            format!("environment variable {name} does not fit setting {section}.{field}")
        })?;
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        let Value::Table(section_table) = entry else {
            bail!("environment variable {name}: [{section}] is not a section");
        };
        section_table.insert(field, value);
    }
    let source = file.map_or("the environment".to_owned(), |p| p.display().to_string());
    let config: Config = Value::Table(table)
        .try_into()
        .with_context(|| format!("invalid configuration in {source}"))?;
    // A variable that a `*_env` setting names holds a key, not a setting
    // (`hs256_secret_env = "LHTTPD_JWT_SECRET"`).
    let named = named_variables(&config)?;
    if let Some((name, key)) = unknown.into_iter().find(|(name, _)| !named.contains(name)) {
        let mut valid: Vec<&str> = settings.iter().map(String::as_str).collect();
        valid.extend(flag_variables);
        valid.extend(OTHER_VARIABLES);
        let key = key.replacen("__", ".", 1);
        match closest(&name.to_ascii_uppercase(), &valid) {
            Some(close) => bail!("unknown setting {name} ({key}): did you mean {close}?"),
            None => bail!(
                "unknown setting {name} ({key}): variables starting with {ENV_PREFIX} name \
                 settings as {ENV_PREFIX}<SECTION>__<KEY> (lhttpd --print-config lists them)"
            ),
        }
    }
    Ok(config)
}

/// `LHTTPD_<SECTION>__<KEY>` for every key of every section, from the defaults serialized
/// with their empty options (so a field added to a section is a valid variable at once).
fn setting_variables() -> anyhow::Result<BTreeSet<String>> {
    let defaults = serde_json::to_value(Config::default()).context("listing the settings")?;
    let mut names = BTreeSet::new();
    for (section, value) in defaults.as_object().into_iter().flatten() {
        for field in value
            .as_object()
            .into_iter()
            .flat_map(|fields| fields.keys())
        {
            names.insert(format!("{ENV_PREFIX}{section}__{field}").to_ascii_uppercase());
        }
    }
    Ok(names)
}

/// The values of every `*_env` setting: names of variables that hold keys.
fn named_variables(config: &Config) -> anyhow::Result<BTreeSet<String>> {
    let value = serde_json::to_value(config).context("reading the configuration")?;
    let mut names = BTreeSet::new();
    for section in value.as_object().into_iter().flat_map(|s| s.values()) {
        for (field, value) in section.as_object().into_iter().flatten() {
            if let (true, Some(name)) = (field.ends_with("_env"), value.as_str()) {
                names.insert(name.to_owned());
            }
        }
    }
    Ok(names)
}

/// The environment value `raw` as the TOML value that setting `section.field` takes. Text
/// settings take it as text, whatever it looks like (an all-digit API key, an issuer `true`);
/// other settings as the first of integer, boolean, float or comma-separated list that the
/// setting accepts. Each candidate is tried on the setting alone, so the type comes from the
/// setting's own declaration.
fn env_value(section: &str, field: &str, raw: &str) -> anyhow::Result<Value> {
    let fits = |value: &Value| {
        let mut fields = Table::new();
        fields.insert(field.to_owned(), value.clone());
        let mut probe = Table::new();
        probe.insert(section.to_owned(), Value::Table(fields));
        Value::Table(probe).try_into::<Config>()
    };
    let text = Value::String(raw.to_owned());
    let text_error = match fits(&text) {
        Ok(_) => return Ok(text),
        Err(error) => error,
    };
    let list = Value::Array(
        raw.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| Value::String(item.to_owned()))
            .collect(),
    );
    let candidates = [
        raw.parse::<i64>().ok().map(Value::Integer),
        raw.parse::<bool>().ok().map(Value::Boolean),
        raw.parse::<f64>().ok().map(Value::Float),
        Some(list),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|value| fits(value).is_ok())
        .ok_or_else(|| anyhow::Error::new(text_error))
}

/// The valid name closest to `name` in edit distance, when it is close enough to be a typo.
fn closest<'a>(name: &str, valid: &[&'a str]) -> Option<&'a str> {
    let (distance, best) = valid
        .iter()
        .map(|candidate| (edit_distance(name, candidate), *candidate))
        .min()?;
    // A third of the name: wrong underscores and a letter or two, not another word.
    (distance <= name.len() / 3).then_some(best)
}

/// Levenshtein distance over bytes (the names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// The effective configuration as TOML that `--config` reads back: every setting, defaults
/// included; unset options are left out. Secrets are printed as [`REDACTED`], which the server
/// refuses as a value, so a printed configuration cannot start a server with a placeholder for
/// its secret; settings that name where a secret is (`*_file`, `*_env`) are printed as they
/// are.
pub fn effective_toml(config: &Config) -> anyhow::Result<String> {
    let mut value = Value::try_from(config).context("writing the configuration as TOML")?;
    redact(&mut value);
    let body = toml::to_string(&value).context("writing the configuration as TOML")?;
    Ok(format!(
        "# Effective configuration of lhttpd {}: every setting, defaults included. Secrets are\n\
         # shown as {REDACTED:?}; lhttpd refuses that value, so put the secret back (or use the\n\
         # _file or _env form) before starting a server with this file.\n\n{body}",
        env!("CARGO_PKG_VERSION")
    ))
}

/// Replaces every secret in `value` with [`REDACTED`]: settings whose names say they hold one
/// and the user and password part of URLs (`nats://user:password@host`).
fn redact(value: &mut Value) {
    match value {
        Value::Table(table) => {
            for (key, field) in table.iter_mut() {
                match field {
                    Value::String(text) if is_secret(key) => *text = REDACTED.to_owned(),
                    other => redact(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(text) => {
            if let Cow::Owned(hidden) = url_without_credentials(text) {
                *text = hidden;
            }
        }
        _ => {}
    }
}

/// True for settings that hold a secret (not those that say where one is: `*_file`, `*_env`).
fn is_secret(key: &str) -> bool {
    const WORDS: [&str; 5] = ["secret", "password", "token", "api_key", "credentials"];
    !key.ends_with("_file") && !key.ends_with("_env") && WORDS.iter().any(|w| key.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn embedded_default_is_the_built_in_default() {
        let parsed: Config = toml::from_str(DEFAULT_CONFIG).expect("default config parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn environment_overrides_file_values() {
        let dir = std::env::temp_dir().join(format!("lhttpd-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "[limits]\nmax_connections = 7\nmax_headers = 9\n").unwrap();
        let env = [(
            "LHTTPD_LIMITS__MAX_CONNECTIONS".to_owned(),
            "500".to_owned(),
        )];
        let config = load(Some(&path), env, &[]).unwrap();
        assert_eq!(config.limits.max_connections, 500);
        assert_eq!(config.limits.max_headers, 9);
        assert_eq!(config.limits.max_message_size, 65536);
    }

    #[test]
    fn cluster_servers_come_from_a_comma_separated_variable() {
        let env = [(
            "LHTTPD_CLUSTER__NATS".to_owned(),
            "nats://a:4222, nats://b:4222".to_owned(),
        )];
        let config = load(None, env, &[]).unwrap();
        assert_eq!(config.cluster.nats, ["nats://a:4222", "nats://b:4222"]);
        assert!(config.cluster.validate().is_ok());
    }

    #[test]
    fn unknown_keys_are_reported() {
        let env = [("LHTTPD_LIMITS__MAX_CONECTIONS".to_owned(), "5".to_owned())];
        let error = format!("{:#}", load(None, env, &[]).unwrap_err());
        assert!(error.contains("max_conections"), "{error}");
    }

    #[test]
    fn a_variable_that_names_no_setting_is_refused_with_the_closest_name() {
        let cases = [
            ("LHTTPD_AUTH_ANONYMOUS", "false", "LHTTPD_AUTH__ANONYMOUS"),
            (
                "LHTTPD_LIMITS_MAX_CONNECTIONS",
                "5",
                "LHTTPD_LIMITS__MAX_CONNECTIONS",
            ),
            ("LHTTPD_LISTN", "127.0.0.1:1", "LHTTPD_LISTEN"),
        ];
        for (name, value, suggestion) in cases {
            let error = format!(
                "{:#}",
                load(None, vars(&[(name, value)]), &["LHTTPD_LISTEN"]).unwrap_err()
            );
            assert_eq!(
                error,
                format!(
                    "unknown setting {name} ({}): did you mean {suggestion}?",
                    name[ENV_PREFIX.len()..]
                        .to_ascii_lowercase()
                        .replacen("__", ".", 1)
                )
            );
        }
        let error = format!(
            "{:#}",
            load(None, vars(&[("LHTTPD_SOMETHING_ELSE", "1")]), &[]).unwrap_err()
        );
        assert!(error.starts_with("unknown setting LHTTPD_SOMETHING_ELSE"));
        assert!(!error.contains("did you mean"), "{error}");
    }

    #[test]
    fn flag_variables_and_variables_named_by_env_settings_are_not_settings() {
        let env = vars(&[
            ("LHTTPD_LISTEN", "127.0.0.1:1"),
            ("LHTTPD_BIN", "/usr/bin/lhttpd"),
            ("LHTTPD_AUTH__HS256_SECRET_ENV", "LHTTPD_JWT_SECRET"),
            ("LHTTPD_JWT_SECRET", "a secret of at least 32 bytes ......"),
        ]);
        let config = load(None, env, &["LHTTPD_LISTEN"]).unwrap();
        assert_eq!(
            config.auth.hs256_secret_env.as_deref(),
            Some("LHTTPD_JWT_SECRET")
        );
    }

    #[test]
    fn text_settings_take_the_text_and_others_their_type() {
        let env = vars(&[
            ("LHTTPD_SERVER__API_KEY", "12345678901234567890"),
            ("LHTTPD_AUTH__ISSUER", "true"),
            ("LHTTPD_AUTH__AUDIENCE", "1.5"),
            ("LHTTPD_AUTH__ANONYMOUS", "false"),
            (
                "LHTTPD_AUTH__HS256_SECRET",
                "a secret of at least 32 bytes ......",
            ),
            ("LHTTPD_LIMITS__MAX_CONNECTIONS", "5"),
            ("LHTTPD_SERVER__METRICS_LISTEN", "127.0.0.1:9100"),
            (
                "LHTTPD_SERVER__ALLOWED_ORIGINS",
                "https://a.example,https://b.example",
            ),
        ]);
        let config = load(None, env, &[]).unwrap();
        assert_eq!(
            config.server.api_key.as_deref(),
            Some("12345678901234567890")
        );
        assert_eq!(config.auth.issuer.as_deref(), Some("true"));
        assert_eq!(config.auth.audience.as_deref(), Some("1.5"));
        assert!(!config.auth.anonymous);
        assert_eq!(config.limits.max_connections, 5);
        assert_eq!(
            config.server.metrics_listen,
            Some("127.0.0.1:9100".parse().unwrap())
        );
        assert_eq!(
            config.server.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        let error = format!(
            "{:#}",
            load(
                None,
                vars(&[("LHTTPD_LIMITS__MAX_CONNECTIONS", "many")]),
                &[]
            )
            .unwrap_err()
        );
        assert!(
            error.contains("LHTTPD_LIMITS__MAX_CONNECTIONS")
                && error.contains("limits.max_connections"),
            "{error}"
        );
    }

    #[test]
    fn secrets_and_url_credentials_are_redacted() {
        let mut config = Config::default();
        config.server.api_key = Some("api key 0123456789".into());
        config.auth.hs256_secret = Some("hs secret".into());
        config.auth.hs256_secret_env = None;
        config.cluster.token = Some("nats token".into());
        config.cluster.user = Some("nats-user".into());
        config.cluster.password = Some("nats password".into());
        config.cluster.nats = vec!["nats://u:pw@nats.example:4222".into()];
        config.upstream.allow = vec!["http://user:pass@10.0.0.1:9000/api".into()];
        let printed = effective_toml(&config).unwrap();
        for secret in [
            "api key",
            "hs secret",
            "nats token",
            "nats password",
            "u:pw",
            "pass@",
        ] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(printed.contains("user = \"nats-user\""), "{printed}");
        assert!(
            printed.contains("\"nats://<redacted>@nats.example:4222\""),
            "{printed}"
        );
        let back: Config = toml::from_str(&printed).unwrap();
        assert_eq!(back.server.api_key.as_deref(), Some(REDACTED));
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("A_B", "A__B"), 1);
    }
}
