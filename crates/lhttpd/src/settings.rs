//! Loading the configuration: the embedded default, then a file, then environment variables.

use std::path::Path;

use anyhow::{Context as _, bail};
use lhttp_server::Config;
use toml::{Table, Value};

/// The commented default configuration, printed by `--print-config`.
pub const DEFAULT_CONFIG: &str = include_str!("../lhttpd.toml");

/// Prefix of environment variables that override configuration keys:
/// `LHTTPD_<SECTION>__<KEY>`, e.g. `LHTTPD_LIMITS__MAX_CONNECTIONS=500`.
const ENV_PREFIX: &str = "LHTTPD_";

/// Builds the configuration from `file` (if any) and the `LHTTPD_<SECTION>__<KEY>` variables in
/// `env`; every error names the file, variable or key at fault.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
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
    for (name, value) in env {
        let Some(key) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let Some((section, field)) = key.split_once("__") else {
            continue; // LHTTPD_LISTEN and LHTTPD_CONFIG are flags, handled by clap.
        };
        let (section, field) = (section.to_ascii_lowercase(), field.to_ascii_lowercase());
        if section.is_empty() || field.is_empty() {
            bail!("environment variable {name}: expected LHTTPD_<SECTION>__<KEY>");
        }
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        let Value::Table(section_table) = entry else {
            bail!("environment variable {name}: [{section}] is not a section");
        };
        // A list cannot be spelt as one TOML scalar: LHTTPD_CLUSTER__NATS takes URLs
        // separated by commas.
        let value = if section == "cluster" && field == "nats" {
            Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|url| !url.is_empty())
                    .map(|url| Value::String(url.to_owned()))
                    .collect(),
            )
        } else {
            env_value(&value)
        };
        section_table.insert(field, value);
    }
    let source = file.map_or("the environment".to_owned(), |p| p.display().to_string());
    let config: Config = Value::Table(table)
        .try_into()
        .with_context(|| format!("invalid configuration in {source}"))?;
    Ok(config)
}

/// An environment value as TOML: an integer or boolean when it reads as one, else a string.
fn env_value(raw: &str) -> Value {
    if let Ok(n) = raw.parse::<i64>() {
        Value::Integer(n)
    } else if let Ok(b) = raw.parse::<bool>() {
        Value::Boolean(b)
    } else {
        Value::String(raw.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let config = load(Some(&path), env).unwrap();
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
        let config = load(None, env).unwrap();
        assert_eq!(config.cluster.nats, ["nats://a:4222", "nats://b:4222"]);
        assert!(config.cluster.validate().is_ok());
    }

    #[test]
    fn unknown_keys_are_reported() {
        let env = [("LHTTPD_LIMITS__MAX_CONECTIONS".to_owned(), "5".to_owned())];
        let error = format!("{:#}", load(None, env).unwrap_err());
        assert!(error.contains("max_conections"), "{error}");
    }
}
