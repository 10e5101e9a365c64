//! A client that knows nothing of Keel's protos and speaks only reflection v1alpha (as Python's
//! grpcio-reflection, older grpcurl and Postman do) can list the services, fetch their
//! descriptors and call `keel.v1.TenantService`.

use bytes::{Buf, BufMut};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Value};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Request, Status};
use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1alpha::{ServerReflectionRequest, ServerReflectionResponse};

use crate::harness::{World, slug};

/// Raw protobuf bytes in and out: the messages are built from reflected descriptors.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

async fn ask(
    client: &mut ServerReflectionClient<tonic::transport::Channel>,
    request: MessageRequest,
) -> MessageResponse {
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("v1alpha reflection answers")
        .into_inner();
    let answer: ServerReflectionResponse = answers.message().await.unwrap().expect("one answer");
    answer.message_response.expect("a response")
}

#[tokio::test]
async fn a_v1alpha_only_client_lists_and_calls_the_tenant_service() {
    let w = World::start().await;
    let t = w.create(&slug(), "o@o.example").await;
    let mut reflection = ServerReflectionClient::new(w.channel());

    let MessageResponse::ListServicesResponse(list) =
        ask(&mut reflection, MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a list of services");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "keel.v1.TenantService",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&expected), "{expected} not in {names:?}");
    }

    // The file that defines the service, then every file it imports, by name.
    let mut files: Vec<prost_types::FileDescriptorProto> = Vec::new();
    let mut wanted = vec![MessageRequest::FileContainingSymbol(
        "keel.v1.TenantService".into(),
    )];
    while let Some(request) = wanted.pop() {
        let MessageResponse::FileDescriptorResponse(found) = ask(&mut reflection, request).await else {
            panic!("no file descriptor");
        };
        for bytes in found.file_descriptor_proto {
            let file = prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap();
            if files.iter().any(|f| f.name == file.name) {
                continue;
            }
            for dep in &file.dependency {
                if !files.iter().any(|f| f.name.as_deref() == Some(dep)) {
                    wanted.push(MessageRequest::FileByFilename(dep.clone()));
                }
            }
            files.push(file);
        }
    }
    let pool =
        DescriptorPool::from_file_descriptor_set(prost_types::FileDescriptorSet { file: files }).unwrap();
    let service = pool.get_service_by_name("keel.v1.TenantService").unwrap();
    let method = service.methods().find(|m| m.name() == "GetTenant").unwrap();

    // GetTenantRequest { tenant: { id } }, built from the reflected descriptors alone.
    let input = method.input();
    let reference = match input.get_field_by_name("tenant").unwrap().kind() {
        prost_reflect::Kind::Message(m) => m,
        other => panic!("tenant is {other:?}"),
    };
    let mut tenant_ref = DynamicMessage::new(reference);
    tenant_ref.set_field_by_name("id", Value::String(t.id.clone()));
    let mut request = DynamicMessage::new(input);
    request.set_field_by_name("tenant", Value::Message(tenant_ref));

    let mut grpc = tonic::client::Grpc::new(w.channel());
    grpc.ready().await.unwrap();
    let mut call = Request::new(request.encode_to_vec());
    call.metadata_mut()
        .insert("authorization", format!("Bearer {}", w.operator).parse().unwrap());
    let path = http::uri::PathAndQuery::from_static("/keel.v1.TenantService/GetTenant");
    let reply = grpc.unary(call, path, Raw).await.expect("GetTenant").into_inner();
    let tenant = DynamicMessage::decode(method.output(), reply.as_slice()).unwrap();
    assert_eq!(
        tenant.get_field_by_name("id").unwrap().as_str(),
        Some(t.id.as_str())
    );
    assert_eq!(
        tenant.get_field_by_name("slug").unwrap().as_str(),
        Some(t.slug.as_str())
    );
    w.cleanup().await;
}
