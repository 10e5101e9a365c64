//! Each request of the tenant service (TenantService, LicenseService, TokenService): the first
//! byte picks the message type, the rest is decoded as that message and put through the checks
//! its handler runs before authorizing (the same public functions, in the same order: field
//! validation in `domain::validate`, enum conversion, page tokens, the tenant reference's
//! `api::check_ref`). No store, no bus. Never panics.
#![no_main]

use keel_auth::scopes;
use keel_proto::v1 as pb;
use keel_tenant::api::check_ref;
use keel_tenant::api::convert::{role_from_pb, tier_from_pb};
use keel_tenant::domain::{page, validate};
use keel_tenant::tokens::{self, MAX_TTL_SECS};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// ListTenants, ListMembers and ListApiKeys: default 50, at most 500.
fn paging(p: Option<pb::PageRequest>) {
    let p = p.unwrap_or_default();
    if let Ok(size) = validate::page_size(page::SIZE_FIELD, p.page_size, 50, 500) {
        assert!((1..=500).contains(&size));
    }
    if let Ok(Some(after)) = page::parse_token(&p.page_token) {
        // A token we accept names the id it starts after; issuing it again gives it back.
        assert_eq!(
            page::parse_token(&page::token(&after)).ok().flatten(),
            Some(after)
        );
    }
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Option<M> {
    M::decode(bytes).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, b)) = data.split_first() else {
        return;
    };
    match which % 18 {
        0 => {
            let Some(r) = decode::<pb::CreateTenantRequest>(b) else {
                return;
            };
            let _ = validate::name("name", &r.name);
            let _ = validate::slug("slug", &r.slug);
            let _ = tier_from_pb("tier", r.tier);
            if let Ok(email) = validate::email("owner_email", &r.owner_email) {
                assert!(validate::email("owner_email", &email).is_ok(), "{email:?}");
            }
            let _ = validate::token("request_id", &r.request_id);
        }
        1 => {
            let Some(r) = decode::<pb::GetTenantRequest>(b) else {
                return;
            };
            let _ = check_ref(r.tenant.as_ref());
        }
        2 => {
            let Some(r) = decode::<pb::ListTenantsRequest>(b) else {
                return;
            };
            paging(r.page);
            let _ = pb::TenantStatus::try_from(r.status).map(|s| s.as_str_name());
        }
        3 => {
            let Some(r) = decode::<pb::ChangeTierRequest>(b) else {
                return;
            };
            let _ = tier_from_pb("tier", r.tier);
            let _ = check_ref(r.tenant.as_ref());
        }
        4 => {
            let Some(r) = decode::<pb::SuspendTenantRequest>(b) else {
                return;
            };
            let _ = validate::reason("reason", &r.reason);
            let _ = check_ref(r.tenant.as_ref());
        }
        5 => {
            let Some(r) = decode::<pb::TenantLifecycleRequest>(b) else {
                return;
            };
            let _ = check_ref(r.tenant.as_ref());
        }
        6 => {
            let Some(r) = decode::<pb::MarkFailedRequest>(b) else {
                return;
            };
            let _ = validate::reason("reason", &r.reason);
            let _ = check_ref(r.tenant.as_ref());
        }
        7 => {
            let Some(r) = decode::<pb::InviteMemberRequest>(b) else {
                return;
            };
            let _ = validate::email("email", &r.email);
            let _ = role_from_pb("role", r.role);
            let _ = check_ref(r.tenant.as_ref());
        }
        8 => {
            let Some(r) = decode::<pb::ListMembersRequest>(b) else {
                return;
            };
            paging(r.page);
            let _ = check_ref(r.tenant.as_ref());
        }
        9 => {
            let Some(r) = decode::<pb::ChangeMemberRoleRequest>(b) else {
                return;
            };
            let _ = role_from_pb("role", r.role);
            let _ = validate::token("member_id", &r.member_id);
            let _ = check_ref(r.tenant.as_ref());
        }
        10 => {
            let Some(r) = decode::<pb::RemoveMemberRequest>(b) else {
                return;
            };
            let _ = validate::token("member_id", &r.member_id);
            let _ = check_ref(r.tenant.as_ref());
        }
        11 => {
            let Some(r) = decode::<pb::GetLicenseRequest>(b) else {
                return;
            };
            let _ = check_ref(r.tenant.as_ref());
        }
        12 => {
            let Some(r) = decode::<pb::ExchangeApiKeyRequest>(b) else {
                return;
            };
            let _ = validate::scopes("scopes", &r.scopes);
            let _ = tokens::key_fingerprint(&r.api_key);
        }
        13 => {
            let Some(r) = decode::<pb::CreateServiceAccountRequest>(b) else {
                return;
            };
            let _ = validate::account_name("name", &r.name);
            let _ = validate::scopes("scopes", &r.scopes);
            let _ = r.scopes.iter().any(|s| s == scopes::OPERATOR);
            let _ = check_ref(r.tenant.as_ref());
        }
        14 => {
            let Some(r) = decode::<pb::IssueTokenRequest>(b) else {
                return;
            };
            let _ = r.tenant_id == "*" || keel_events::subjects::is_valid_token(&r.tenant_id);
            let _ = validate::token("subject", &r.subject);
            let _ = validate::scopes("scopes", &r.scopes);
            let _ = r.ttl_seconds <= MAX_TTL_SECS;
        }
        15 => {
            let Some(r) = decode::<pb::CreateOperatorKeyRequest>(b) else {
                return;
            };
            let _ = validate::account_name("name", &r.name);
            let _ = validate::scopes("scopes", &r.scopes);
        }
        16 => {
            let Some(r) = decode::<pb::ListApiKeysRequest>(b) else {
                return;
            };
            paging(r.page);
            if r.tenant.is_some() {
                let _ = check_ref(r.tenant.as_ref());
            }
        }
        _ => {
            let Some(r) = decode::<pb::RevokeApiKeyRequest>(b) else {
                return;
            };
            let _ = validate::token("key_id", &r.key_id);
        }
    }
});
