//! Who is calling: the subject of a verified client certificate (mutual
//! TLS), or the name a bearer token is registered under. Tokens are kept
//! only as SHA-256 hashes (a leaked token file grants nothing) and compared
//! in constant time. Without either configured the server is single-tenant
//! and every caller is [`Principal::anonymous`].

use std::path::Path;

use anyhow::{bail, Context};
use tonic::Status;

/// A caller, as authentication named it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal(pub String);

impl Principal {
    /// The caller of a server without authentication.
    pub fn anonymous() -> Self {
        Self("anonymous".to_owned())
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One registered token: who it names, and its hash.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub principal: String,
    hash: [u8; 32],
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a token, as the tokens file stores it.
pub fn hash_token(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `sha256:HEX` of a token: a line's second field in the tokens file.
pub fn token_line_hash(token: &str) -> String {
    let hex: String = hash_token(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Reads a tokens file: one `PRINCIPAL sha256:HEX` per line (make the hash
/// with `expresscache-server token hash`), `#` comments, blank lines.
pub fn load_tokens(path: &Path) -> anyhow::Result<Vec<TokenEntry>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the tokens file {}", path.display()))?;
    parse_tokens(&text).with_context(|| format!("in the tokens file {}", path.display()))
}

fn parse_tokens(text: &str) -> anyhow::Result<Vec<TokenEntry>> {
    let mut out: Vec<TokenEntry> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [principal, hash] = fields[..] else {
            bail!("line {}: expected `PRINCIPAL sha256:HEX`", n + 1);
        };
        let Some(hash) = parse_hash(hash) else {
            // Not echoed: a token pasted here by mistake must not reach
            // the logs.
            bail!(
                "line {}: the second field ({} characters) is not sha256: and 64 hex digits; \
                 store the hash (`expresscache-server token hash`), never the token",
                n + 1,
                hash.chars().count()
            );
        };
        if principal == Principal::anonymous().0 {
            bail!(
                "line {}: \"anonymous\" names the caller of a server without authentication; \
                 give the token another name",
                n + 1
            );
        }
        if out.iter().any(|e| e.hash == hash) {
            bail!("line {}: the same token is registered twice", n + 1);
        }
        out.push(TokenEntry {
            principal: principal.to_owned(),
            hash,
        });
    }
    if out.is_empty() {
        bail!("no token is registered");
    }
    Ok(out)
}

/// The subject of a DER certificate, as the principal of mutual TLS: its
/// attributes in certificate order, `TYPE=value` joined by `,` (and `+`
/// within one RDN), with `,+=\` in values escaped by a backslash, e.g.
/// `CN=launcher,O=genomics`.
pub fn certificate_subject(der: &[u8]) -> Result<String, String> {
    use x509_parser::objects::{oid2abbrev, oid_registry};
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut rdns = Vec::new();
    for rdn in cert.subject().iter() {
        let mut parts = Vec::new();
        for attr in rdn.iter() {
            let name = oid2abbrev(attr.attr_type(), oid_registry())
                .map(str::to_owned)
                .unwrap_or_else(|_| attr.attr_type().to_id_string());
            let value = attr
                .as_str()
                .map_err(|e| format!("subject attribute {name}: {e}"))?;
            let mut escaped = String::with_capacity(value.len());
            for c in value.chars() {
                if matches!(c, ',' | '+' | '=' | '\\') {
                    escaped.push('\\');
                }
                escaped.push(c);
            }
            parts.push(format!("{name}={escaped}"));
        }
        rdns.push(parts.join("+"));
    }
    if rdns.is_empty() {
        return Err("the certificate has an empty subject".into());
    }
    Ok(rdns.join(","))
}

/// Names callers; see the module documentation.
#[derive(Debug, Default)]
pub struct Authenticator {
    tokens: Vec<TokenEntry>,
    /// Client certificates verified by the TLS layer name their caller.
    mtls: bool,
}

impl Authenticator {
    pub fn new(tokens: Vec<TokenEntry>, mtls: bool) -> Self {
        Self { tokens, mtls }
    }

    /// Whether calls must name a caller at all.
    pub fn enabled(&self) -> bool {
        self.mtls || !self.tokens.is_empty()
    }

    /// Who sent `req`: a verified client certificate first, then a bearer
    /// token; UNAUTHENTICATED when neither names a caller.
    pub fn authenticate<T>(&self, req: &tonic::Request<T>) -> Result<Principal, Status> {
        if !self.enabled() {
            return Ok(Principal::anonymous());
        }
        if self.mtls {
            // Present only if the handshake verified it against the CA.
            if let Some(leaf) = req.peer_certs().as_deref().and_then(|c| c.first()) {
                return certificate_subject(leaf).map(Principal).map_err(|e| {
                    Status::unauthenticated(format!("unreadable client certificate: {e}"))
                });
            }
        }
        if let Some(value) = req.metadata().get("authorization") {
            if self.tokens.is_empty() {
                return Err(Status::unauthenticated(
                    "this server takes no bearer tokens; present a client certificate",
                ));
            }
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or_else(|| {
                    Status::unauthenticated("the authorization header must be `Bearer TOKEN`")
                })?;
            let presented = hash_token(token);
            // Every entry compared, each in constant time: the time taken
            // tells nothing about which (or whether one) matched.
            let mut found = None;
            for e in &self.tokens {
                if aws_lc_rs::constant_time::verify_slices_are_equal(&e.hash, &presented).is_ok() {
                    found = Some(&e.principal);
                }
            }
            return found.map(|p| Principal(p.clone())).ok_or_else(|| {
                Status::unauthenticated("the bearer token is not registered with this server")
            });
        }
        Err(Status::unauthenticated(match (self.mtls, self.tokens.is_empty()) {
            (true, true) => "this server requires a client certificate signed by its client CA",
            (true, false) => "this server requires a client certificate signed by its client CA, or a bearer token (EXPRESSCACHE_TOKEN)",
            _ => "this server requires a bearer token (EXPRESSCACHE_TOKEN or --token-file)",
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(token: &str) -> tonic::Request<()> {
        let mut r = tonic::Request::new(());
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        r
    }

    #[test]
    fn tokens_are_stored_as_hashes_and_name_their_principal() {
        let file = format!(
            "# ci\nci-runner {}\n\nlauncher {}\n",
            token_line_hash("s3cret-one"),
            token_line_hash("s3cret-two")
        );
        let auth = Authenticator::new(parse_tokens(&file).expect("parses"), false);
        assert_eq!(
            auth.authenticate(&with_token("s3cret-two")).ok(),
            Some(Principal("launcher".to_owned()))
        );
        let refused = auth
            .authenticate(&with_token("guess"))
            .expect_err("unknown token");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let none = auth
            .authenticate(&tonic::Request::new(()))
            .expect_err("no token");
        assert!(none.message().contains("EXPRESSCACHE_TOKEN"), "{none:?}");
    }

    #[test]
    fn a_token_file_with_a_plain_token_or_a_duplicate_is_refused_by_line() {
        let plain = parse_tokens("ci-runner s3cret\n").expect_err("plain token");
        assert!(format!("{plain:#}").contains("line 1"), "{plain:#}");
        assert!(!format!("{plain:#}").contains("s3cret"), "never echoed");
        let anon = format!("anonymous {}\n", token_line_hash("x"));
        assert!(parse_tokens(&anon).is_err(), "a token may not be anonymous");
        let dup = format!("a {h}\nb {h}\n", h = token_line_hash("x"));
        assert!(format!("{:#}", parse_tokens(&dup).expect_err("dup")).contains("line 2"));
        assert!(parse_tokens("# nothing\n").is_err());
    }

    #[test]
    fn without_authentication_every_caller_is_anonymous() {
        let auth = Authenticator::default();
        assert_eq!(
            auth.authenticate(&with_token("anything")).ok(),
            Some(Principal::anonymous())
        );
    }
}
