//! The `id` and `meta` Cohere's responses carry (embed and rerank; Cohere API reference,
//! and the `cohere` Python client's `ApiMeta`: `api_version.version`,
//! `billed_units.input_tokens`, `tokens.input_tokens`).

use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct ApiVersion {
    pub version: String,
}

#[derive(Serialize, ToSchema)]
pub struct InputTokens {
    pub input_tokens: usize,
}

#[derive(Serialize, ToSchema)]
pub struct Meta {
    pub api_version: ApiVersion,
    /// Nothing is billed; the count is the tokens the model read.
    pub billed_units: InputTokens,
    pub tokens: InputTokens,
}

impl Meta {
    pub fn new(version: &str, tokens: usize) -> Meta {
        Meta {
            api_version: ApiVersion { version: version.to_owned() },
            billed_units: InputTokens { input_tokens: tokens },
            tokens: InputTokens { input_tokens: tokens },
        }
    }
}

/// A random UUID (version 4), the form Cohere's response ids take.
pub fn response_id() -> String {
    let mut b = [0u8; 16];
    // The system RNG failing is not something a request can recover from; an all-zero id
    // is still a valid (if not unique) id.
    let _ = SystemRandom::new().fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_uuid4_and_differ() {
        let (a, b) = (super::response_id(), super::response_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
