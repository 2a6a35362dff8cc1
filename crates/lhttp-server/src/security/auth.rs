//! Authentication: verifying JSON Web Tokens and the [`User`] they name.
//!
//! A token is accepted when it is signed with one of the configured keys (HS256 secret, RS256
//! or ES256 public key) under that key's algorithm only — a token cannot choose to be checked
//! as HS256 against a public key — its `exp` is in the future, its `nbf` (when present) is not,
//! and, when an issuer or audience is configured, its `iss` equals the issuer and its `aud`
//! names the audience (a token without the claim is refused). Claims used by lhttp:
//!
//! - `sub` (required, a string): the user id;
//! - `exp` (required): expiry, seconds since the epoch; the connection is closed then;
//! - `roles` (optional, array of strings): matched by `roles` in `[[auth.rules]]`;
//! - `channels` (optional, object): `{"subscribe": [patterns], "publish": [patterns],
//!   "only": bool}` — extra patterns for this user, or with `only: true` the only ones.
//!
//! Every other claim is kept in [`User::claims`] for processors and filters.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use lhttp_proto::pattern::Pattern;
use serde_json::{Map, Value};

use crate::{config::AuthConfig, security::permissions::TokenChannels};

/// The authenticated user of a connection, from its token's claims.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    id: String,
    roles: Vec<String>,
    expires_at: u64,
    channels: Option<TokenChannels>,
    claims: Map<String, Value>,
}

impl User {
    /// The user id: the token's `sub` claim.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The token's `roles` claim (empty when it has none).
    pub fn roles(&self) -> &[String] {
        &self.roles
    }

    /// True when the token's `roles` claim holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// When the token expires (its `exp` claim).
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.expires_at)
    }

    /// Every claim of the token, as JSON.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    pub(crate) fn token_channels(&self) -> Option<&TokenChannels> {
        self.channels.as_ref()
    }
}

/// The latest expiry honoured (the end of year 9999, in seconds since the epoch); a later `exp`
/// counts as this one.
const LATEST_EXP: u64 = 253_402_300_799;

/// Why a token was refused. The text is the `reason` the client gets; it never echoes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No key is configured, so no token can be verified.
    #[error("token authentication is not configured on this server")]
    NotConfigured,
    /// The token is not three base64url parts with a JSON header and claims.
    #[error("malformed token")]
    Malformed,
    /// The header names an algorithm for which no key is configured.
    #[error("token algorithm {0} not accepted")]
    Algorithm(String),
    /// The signature does not verify with the configured key.
    #[error("invalid token signature")]
    Signature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong token issuer")]
    Issuer,
    /// `aud` does not name the configured audience.
    #[error("wrong token audience")]
    Audience,
    /// A required claim is missing or has the wrong type.
    #[error("token claim {0}")]
    Claim(String),
}

/// What [`mint_token`] puts in a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    /// The user id (`sub`).
    pub user: String,
    /// `roles`, matched by `roles` in `[[auth.rules]]`.
    pub roles: Vec<String>,
    /// Channel patterns this user may subscribe to besides what the rules allow (`channels`).
    pub subscribe: Vec<String>,
    /// Channel patterns this user may publish to besides what the rules allow.
    pub publish: Vec<String>,
    /// The patterns above are the only channels the user may use, whatever the rules say.
    pub only: bool,
    /// How long the token is valid (`exp` is now plus this).
    pub valid_for: Duration,
}

/// Signs a token for `spec` with the HS256 secret `config` names (its value, file or
/// variable), carrying the issuer and audience `config` requires: a token that a server with
/// this configuration accepts. Only HS256 tokens can be made from a server's configuration (it
/// holds the public half of RS256 and ES256 keys); an invalid pattern is refused.
pub fn mint_token(config: &AuthConfig, spec: &TokenSpec) -> Result<String, String> {
    let secret = read_source(
        "hs256_secret",
        &config.hs256_secret,
        &config.hs256_secret_file,
        &config.hs256_secret_env,
    )?
    .ok_or(
        "auth.hs256_secret is not set: tokens are made with the HS256 secret (RS256 and ES256 \
         tokens are signed by whoever holds the private key)",
    )?;
    let secret = secret.trim_end();
    if secret.len() < 32 {
        return Err("auth.hs256_secret must be at least 32 bytes".into());
    }
    if spec.user.is_empty() {
        return Err("a token needs a user (sub)".into());
    }
    for pattern in spec.subscribe.iter().chain(&spec.publish) {
        Pattern::parse(pattern).map_err(|e| format!("channel pattern {pattern:?}: {e}"))?;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut claims = Map::new();
    claims.insert("sub".into(), spec.user.clone().into());
    claims.insert("iat".into(), now.into());
    claims.insert(
        "exp".into(),
        now.saturating_add(spec.valid_for.as_secs())
            .min(LATEST_EXP)
            .into(),
    );
    if !spec.roles.is_empty() {
        claims.insert("roles".into(), spec.roles.clone().into());
    }
    if !spec.subscribe.is_empty() || !spec.publish.is_empty() || spec.only {
        let mut channels = Map::new();
        channels.insert("subscribe".into(), spec.subscribe.clone().into());
        channels.insert("publish".into(), spec.publish.clone().into());
        channels.insert("only".into(), spec.only.into());
        claims.insert("channels".into(), channels.into());
    }
    if let Some(issuer) = &config.issuer {
        claims.insert("iss".into(), issuer.clone().into());
    }
    if let Some(audience) = &config.audience {
        claims.insert("aud".into(), audience.clone().into());
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("signing the token: {e}"))
}

/// Checks tokens against the configured keys.
pub(crate) struct Verifier {
    /// One key per accepted algorithm.
    keys: HashMap<Algorithm, DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Reads the keys named by `config` (values, files, environment variables).
    pub(crate) fn new(config: &AuthConfig) -> Result<Verifier, String> {
        let mut keys = HashMap::new();
        if let Some(secret) = read_source(
            "hs256_secret",
            &config.hs256_secret,
            &config.hs256_secret_file,
            &config.hs256_secret_env,
        )? {
            // A trailing newline is an accident of how secret files are written, not key data.
            let secret = secret.trim_end();
            if secret.len() < 32 {
                return Err("auth.hs256_secret must be at least 32 bytes".into());
            }
            keys.insert(
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            );
        }
        if let Some(pem) = read_source(
            "rs256_public_key",
            &config.rs256_public_key,
            &config.rs256_public_key_file,
            &config.rs256_public_key_env,
        )? {
            let key = DecodingKey::from_rsa_pem(pem.as_bytes())
                .map_err(|e| format!("auth.rs256_public_key: not an RSA public key PEM: {e}"))?;
            keys.insert(Algorithm::RS256, key);
        }
        if let Some(pem) = read_source(
            "es256_public_key",
            &config.es256_public_key,
            &config.es256_public_key_file,
            &config.es256_public_key_env,
        )? {
            let key = DecodingKey::from_ec_pem(pem.as_bytes())
                .map_err(|e| format!("auth.es256_public_key: not an EC public key PEM: {e}"))?;
            keys.insert(Algorithm::ES256, key);
        }
        Ok(Verifier {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway_secs,
        })
    }

    /// Seconds of clock skew tolerated.
    pub(crate) fn leeway(&self) -> u64 {
        self.leeway
    }

    /// Verifies `token` and returns its user.
    pub(crate) fn verify(&self, token: &str) -> Result<User, AuthError> {
        if self.keys.is_empty() {
            return Err(AuthError::NotConfigured);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName => AuthError::Algorithm("unknown".into()),
            _ => AuthError::Malformed,
        })?;
        let Some(key) = self.keys.get(&header.alg) else {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        // jsonwebtoken compares `aud` and `iss` only when the token carries them: a configured
        // audience or issuer must also be required, or a token without the claim (minted for
        // another service with the same key) would pass.
        let mut required = vec!["exp", "sub"];
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::Signature,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidIssuer => AuthError::Issuer,
                ErrorKind::InvalidAudience => AuthError::Audience,
                ErrorKind::MissingRequiredClaim(claim) => {
                    AuthError::Claim(format!("{claim} missing"))
                }
                ErrorKind::InvalidAlgorithm => AuthError::Algorithm(format!("{:?}", header.alg)),
                _ => AuthError::Malformed,
            },
        )?;
        // `iss` names one issuer (RFC 7519, 4.1.1); jsonwebtoken also accepts an array that
        // merely contains the configured one.
        if let Some(issuer) = &self.issuer {
            if data.claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
                return Err(AuthError::Issuer);
            }
        }
        user_from_claims(data.claims)
    }
}

/// Reads a value given directly, in a file, or in an environment variable (at most one of them
/// is set; [`AuthConfig::validate`] checks that).
fn read_source(
    name: &str,
    value: &Option<String>,
    file: &Option<std::path::PathBuf>,
    env: &Option<String>,
) -> Result<Option<String>, String> {
    if let Some(value) = value {
        return Ok(Some(value.clone()));
    }
    if let Some(path) = file {
        return std::fs::read_to_string(path)
            .map(Some)
            .map_err(|e| format!("auth.{name}_file {}: {e}", path.display()));
    }
    if let Some(var) = env {
        return std::env::var(var)
            .map(Some)
            .map_err(|e| format!("auth.{name}_env {var}: {e}"));
    }
    Ok(None)
}

fn user_from_claims(claims: Map<String, Value>) -> Result<User, AuthError> {
    let id = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(AuthError::Claim("sub must be a non-empty string".into())),
    };
    let expires_at = claims
        .get("exp")
        .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)))
        .ok_or_else(|| AuthError::Claim("exp must be a number".into()))?
        // Far-future values would overflow time arithmetic; no token needs to outlive this.
        .min(LATEST_EXP);
    let roles = match claims.get("roles") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => strings(value)
            .ok_or_else(|| AuthError::Claim("roles must be an array of strings".into()))?,
    };
    let channels = match claims.get("channels") {
        None | Some(Value::Null) => None,
        Some(value) => Some(token_channels(value)?),
    };
    Ok(User {
        id,
        roles,
        expires_at,
        channels,
        claims,
    })
}

fn strings(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn token_channels(value: &Value) -> Result<TokenChannels, AuthError> {
    let bad = |what: &str| AuthError::Claim(format!("channels: {what}"));
    let object = value.as_object().ok_or_else(|| bad("must be an object"))?;
    let patterns = |key: &str| -> Result<Vec<Pattern>, AuthError> {
        match object.get(key) {
            None => Ok(Vec::new()),
            Some(list) => strings(list)
                .ok_or_else(|| bad("subscribe and publish must be arrays of strings"))?
                .iter()
                .map(|p| Pattern::parse(p).map_err(|_| bad("invalid pattern")))
                .collect(),
        }
    };
    Ok(TokenChannels {
        subscribe: patterns("subscribe")?,
        publish: patterns("publish")?,
        only: match object.get("only") {
            None => false,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| bad("only must be true or false"))?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "test-only hs256 secret, 32+ bytes long!";
    const RS_PRIVATE: &str = include_str!("../../tests/fixtures/auth/rs256-private.pem");
    const RS_PUBLIC: &str = include_str!("../../tests/fixtures/auth/rs256-public.pem");
    const RS_OTHER: &str = include_str!("../../tests/fixtures/auth/rs256-other-private.pem");
    const ES_PRIVATE: &str = include_str!("../../tests/fixtures/auth/es256-private.pem");
    const ES_PUBLIC: &str = include_str!("../../tests/fixtures/auth/es256-public.pem");

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn verifier(change: impl FnOnce(&mut AuthConfig)) -> Verifier {
        let mut config = AuthConfig {
            hs256_secret: Some(SECRET.into()),
            rs256_public_key: Some(RS_PUBLIC.into()),
            es256_public_key: Some(ES_PUBLIC.into()),
            leeway_secs: 0,
            ..AuthConfig::default()
        };
        change(&mut config);
        Verifier::new(&config).unwrap()
    }

    #[test]
    fn a_minted_token_is_accepted_with_its_user_roles_channels_issuer_and_audience() {
        let config = AuthConfig {
            hs256_secret: Some(SECRET.into()),
            issuer: Some("https://auth.example".into()),
            audience: Some("lhttp".into()),
            leeway_secs: 0,
            ..AuthConfig::default()
        };
        let spec = TokenSpec {
            user: "ann".into(),
            roles: vec!["admin".into()],
            subscribe: vec!["chat.*".into()],
            publish: vec!["chat.lobby".into()],
            only: true,
            valid_for: Duration::from_secs(600),
        };
        let token = mint_token(&config, &spec).unwrap();
        let user = Verifier::new(&config).unwrap().verify(&token).unwrap();
        assert_eq!(user.id(), "ann");
        assert!(user.has_role("admin"));
        let channels = user.token_channels().expect("channels claim");
        assert!(channels.only);
        let left = user.expires_at().duration_since(SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(590) && left <= Duration::from_secs(600));
        // Not with another secret, and not without one.
        let other = AuthConfig {
            hs256_secret: Some("another secret of thirty-two bytes!!".into()),
            ..config.clone()
        };
        assert!(Verifier::new(&other).unwrap().verify(&token).is_err());
        let rs_only = AuthConfig {
            hs256_secret: None,
            rs256_public_key: Some(RS_PUBLIC.into()),
            ..AuthConfig::default()
        };
        assert!(
            mint_token(&rs_only, &spec)
                .unwrap_err()
                .contains("hs256_secret")
        );
        let bad = TokenSpec {
            subscribe: vec!["chat..x".into()],
            ..spec
        };
        assert!(mint_token(&config, &bad).unwrap_err().contains("chat..x"));
    }

    fn hs(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn each_algorithm_verifies_with_its_key() {
        let v = verifier(|_| {});
        let claims = json!({"sub": "alice", "exp": now() + 60, "roles": ["admin"], "team": 7});
        let rs = encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(RS_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        let es = encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_pem(ES_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        for token in [hs(claims.clone()), rs, es] {
            let user = v.verify(&token).unwrap();
            assert_eq!(user.id(), "alice");
            assert!(user.has_role("admin"));
            assert_eq!(user.claims()["team"], 7);
        }
    }

    #[test]
    fn refusals_name_their_reason() {
        let v = verifier(|c| {
            c.issuer = Some("https://issuer.example".into());
            c.audience = Some("lhttp".into());
        });
        let good =
            json!({"sub": "a", "exp": now() + 60, "iss": "https://issuer.example", "aud": "lhttp"});
        assert!(v.verify(&hs(good.clone())).is_ok());
        let with = |k: &str, val: Value| {
            let mut c = good.clone();
            c[k] = val;
            hs(c)
        };
        assert_eq!(
            v.verify(&with("exp", json!(now() - 5))),
            Err(AuthError::Expired)
        );
        assert_eq!(
            v.verify(&with("nbf", json!(now() + 300))),
            Err(AuthError::NotYetValid)
        );
        assert_eq!(
            v.verify(&with("iss", json!("evil"))),
            Err(AuthError::Issuer)
        );
        assert_eq!(
            v.verify(&with("aud", json!("other"))),
            Err(AuthError::Audience)
        );
        assert!(matches!(
            v.verify(&with("sub", json!(5))),
            Err(AuthError::Claim(_))
        ));
        assert!(matches!(
            v.verify(&with("roles", json!("admin"))),
            Err(AuthError::Claim(_))
        ));
        assert_eq!(v.verify("not.a.token"), Err(AuthError::Malformed));
        assert_eq!(v.verify(""), Err(AuthError::Malformed));
        for claim in ["aud", "iss"] {
            let mut without = good.clone();
            without.as_object_mut().unwrap().remove(claim);
            assert_eq!(
                v.verify(&hs(without)),
                Err(AuthError::Claim(format!("{claim} missing")))
            );
        }
        let mut no_exp = good.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(matches!(v.verify(&hs(no_exp)), Err(AuthError::Claim(_))));
        // Signed with a key the server does not trust.
        let other = encode(
            &Header::new(Algorithm::RS256),
            &good,
            &EncodingKey::from_rsa_pem(RS_OTHER.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&other), Err(AuthError::Signature));
        // The right secret under an algorithm that is not configured.
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &good,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify(&hs384), Err(AuthError::Algorithm("HS384".into())));
    }

    #[test]
    fn an_rs256_public_key_is_never_used_as_an_hs256_secret() {
        // The classic confusion attack: sign HS256 with the public key's text.
        let v = verifier(|c| c.hs256_secret = None);
        let token = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "a", "exp": now() + 60}),
            &EncodingKey::from_secret(RS_PUBLIC.as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify(&token), Err(AuthError::Algorithm("HS256".into())));
    }

    #[test]
    fn keys_come_from_files_and_environment() {
        let dir = std::env::temp_dir().join(format!("lhttp-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, format!("{SECRET}\n")).unwrap();
        let v = verifier(|c| {
            c.hs256_secret = None;
            c.hs256_secret_file = Some(path.clone());
        });
        assert!(
            v.verify(&hs(json!({"sub": "a", "exp": now() + 60})))
                .is_ok()
        );
        // PATH is always set and is not a PEM key: the variable is read and its content checked.
        let error = Verifier::new(&AuthConfig {
            es256_public_key_env: Some("PATH".into()),
            ..AuthConfig::default()
        })
        .unwrap_err();
        assert!(error.contains("es256_public_key"), "{error}");
        let error = Verifier::new(&AuthConfig {
            hs256_secret_env: Some("LHTTP_TEST_SURELY_UNSET_VARIABLE".into()),
            ..AuthConfig::default()
        })
        .unwrap_err();
        assert!(
            error.contains("LHTTP_TEST_SURELY_UNSET_VARIABLE"),
            "{error}"
        );
        let error = Verifier::new(&AuthConfig {
            hs256_secret: Some("short".into()),
            ..AuthConfig::default()
        })
        .unwrap_err();
        assert!(error.contains("32 bytes"), "{error}");
    }

    #[test]
    fn printing_the_config_does_not_print_the_secret() {
        let config = AuthConfig {
            hs256_secret: Some(SECRET.into()),
            ..AuthConfig::default()
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains(SECRET), "{printed}");
        assert!(
            printed.contains("hs256_secret: Some(\"<hidden>\")"),
            "{printed}"
        );
    }

    #[test]
    fn an_absurd_expiry_is_clamped_not_overflowed() {
        let v = verifier(|_| {});
        let user = v.verify(&hs(json!({"sub": "a", "exp": u64::MAX}))).unwrap();
        assert_eq!(
            user.expires_at(),
            UNIX_EPOCH + Duration::from_secs(LATEST_EXP)
        );
    }

    #[test]
    fn channel_claims_are_parsed() {
        let v = verifier(|_| {});
        let user = v
            .verify(&hs(json!({"sub": "a", "exp": now() + 60,
                "channels": {"subscribe": ["room.*"], "publish": ["room.1"], "only": true}})))
            .unwrap();
        let channels = user.token_channels().unwrap();
        assert!(channels.only);
        assert!(channels.subscribe[0].matches("room.9"));
        let bad = v.verify(&hs(
            json!({"sub": "a", "exp": now() + 60, "channels": {"subscribe": ["a..b"]}}),
        ));
        assert!(matches!(bad, Err(AuthError::Claim(_))));
    }
}
