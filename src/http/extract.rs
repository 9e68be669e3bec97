//! `AuthUser`: the caller of an authenticated endpoint, from
//! `Authorization: Bearer <access token>`.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};

use super::error::ApiError;
use crate::error::HubError;
use crate::model::Pubkey;
use crate::state::AppState;

pub struct AuthUser(pub Pubkey);

/// The token of an `Authorization: Bearer` header, if there is one.
pub fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get("Authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<AuthUser, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| HubError::internal(anyhow::anyhow!("app state is not configured")))?;
    let token = bearer_token(req).ok_or(HubError::Unauthorized("missing bearer token"))?;
    Ok(AuthUser(state.jwt.verify(token)?))
}
