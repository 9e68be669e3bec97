//! The web client: static files compiled into the binary and served at `/`
//! (the page) and `/app/{file}` (its script, styles and vendored crypto).
//!
//! Every response carries a strict Content-Security-Policy: scripts and styles
//! only from the hub itself (no inline code, no `eval`, no WebAssembly), the
//! WebSocket and API calls only to the hub, no framing. Files are revalidated
//! on every load (`no-cache` with a strong `ETag` of their content), so a new
//! binary never leaves a stale script beside a new page.

use std::sync::OnceLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{guard, web, HttpRequest, HttpResponse, ResponseError as _};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::error::HubError;

/// The policy on every file of the web client.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self'; \
     img-src 'self' data:; style-src 'self'; script-src 'self'; base-uri 'none'; \
     frame-ancestors 'none'; form-action 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../../web/index.html"),
};

/// The files under `/app/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/app.js"),
    },
    Asset {
        name: "proto.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/proto.js"),
    },
    Asset {
        name: "dm.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/dm.js"),
    },
    Asset {
        name: "vendor/crypto.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/vendor/crypto.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/style.css"),
    },
];

/// Registers `/` and `/app/{file}` (`vendor/crypto.js` included) (GET and HEAD; other methods get the JSON
/// 405). Unknown files are the JSON 404 of every other unknown path.
pub fn routes(cfg: &mut web::ServiceConfig) {
    let get_or_head = || guard::Any(guard::Get()).or(guard::Head());
    cfg.service(
        web::resource("/")
            .route(web::route().guard(get_or_head()).to(index))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/app/{file:.+}")
            .route(web::route().guard(get_or_head()).to(asset))
            .default_service(web::to(method_not_allowed)),
    );
}

async fn method_not_allowed() -> HttpResponse {
    let mut res = ApiError(HubError::MethodNotAllowed).error_response();
    res.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    res
}

async fn index(req: HttpRequest) -> HttpResponse {
    serve(&req, &INDEX, 0)
}

async fn asset(req: HttpRequest, file: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let i = ASSETS
        .iter()
        .position(|a| a.name == file.as_str())
        .ok_or(HubError::NotFound("no such route"))?;
    Ok(serve(&req, &ASSETS[i], i + 1))
}

/// The strong ETag of file `slot` (0 is the page, then `ASSETS` in order).
fn etag(slot: usize, body: &[u8]) -> &'static str {
    static TAGS: OnceLock<Vec<OnceLock<String>>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| (0..=ASSETS.len()).map(|_| OnceLock::new()).collect());
    tags[slot].get_or_init(|| format!("\"{}\"", hex::encode(&Sha256::digest(body)[..16])))
}

fn serve(req: &HttpRequest, asset: &Asset, slot: usize) -> HttpResponse {
    let tag = etag(slot, asset.body);
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut res = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::ETAG, tag))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"));
    if fresh {
        res.finish()
    } else {
        res.content_type(asset.content_type).body(asset.body)
    }
}
