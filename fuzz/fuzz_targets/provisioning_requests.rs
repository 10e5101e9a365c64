//! Each ProvisioningService request: the first byte picks the message type, the rest is decoded
//! as that message and validated as the handler validates it. Never panics.
#![no_main]

use keel_proto::v1 as pb;
use keel_provisioning::api::validate;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(r) = pb::GetProvisioningStatusRequest::decode(bytes) {
                let _ = validate::tenant_id(&r.tenant_id);
            }
        }
        1 => {
            if let Ok(r) = pb::ListRunsRequest::decode(bytes) {
                if !r.tenant_id.is_empty() {
                    let _ = validate::tenant_id(&r.tenant_id);
                }
                if let Ok((size, _)) = validate::list_runs_page(&r.page.unwrap_or_default()) {
                    assert!((1..=500).contains(&size));
                }
            }
        }
        2 => {
            if let Ok(r) = pb::IssueAuditCredentialsRequest::decode(bytes) {
                let _ = validate::tenant_id(&r.tenant_id);
            }
        }
        _ => {
            if let Ok(r) = pb::RetryRunRequest::decode(bytes) {
                let _ = validate::run_id(&r.run_id);
                let _ = validate::request_id(&r.request_id);
            }
        }
    }
});
