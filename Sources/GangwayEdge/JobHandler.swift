import GangwayAMQPCore
import GangwayConfig
import GangwayCore
import HTTPTypes
import Hummingbird
import NIOCore

/// Jobs: `POST <job route>` → 202 + Location; `GET /v1/jobs/{id}` → status;
/// `GET /v1/jobs/{id}/events` → Server-Sent Events with history, `Last-Event-ID` resume,
/// heartbeats, and the end of the stream after `done` or `failed`.
struct JobHandler: Sendable {
    let client: JobClient
    /// The edge's open event streams (heartbeats, buffer bound).
    let clients: SSEClients
    static let prefix = "/v1/jobs/"
    static let eventsSuffix = "/events"

    func submit(_ request: Request, context: GatewayRequestContext, route: Route, parameters: [String: String]) async throws -> Response {
        let gatewayRequest = try await GatewayRequest.make(from: request, context: context, route: route, parameters: parameters)
        let id = try await client.submit(gatewayRequest)
        let status = Self.prefix + id
        let events = status + Self.eventsSuffix
        let body = #"{"id":"\#(id)","status":"queued","status_url":"\#(status)","events_url":"\#(events)"}"#
        return Response(
            status: .accepted,
            headers: [
                .location: status, .retryAfter: "1", .contentType: "application/json",
                HTTPField.Name("Link")!: "<\(events)>; rel=\"monitor\"",
            ],
            body: .init(byteBuffer: ByteBuffer(string: body))
        )
    }

    /// Handles `GET /v1/jobs/{id}` and `GET /v1/jobs/{id}/events`; nil for other paths.
    func handleBuiltIn(_ request: Request, context: GatewayRequestContext) async throws -> Response? {
        let path = request.uri.path
        guard request.method == .get || request.method == .delete, path.hasPrefix(Self.prefix) else { return nil }
        let rest = path.dropFirst(Self.prefix.count).split(separator: "/", omittingEmptySubsequences: false)
        guard let id = rest.first.map(String.init), Self.isJobID(id) else { return nil }
        // Right after this edge started, a job may be in the history it is still replaying.
        if client.hub.status(of: id) == nil { _ = await client.hub.awaitKnown(jobID: id) }
        if request.method == .delete {
            guard rest.count == 1 else { return nil }
            return try await cancel(id)
        }
        if rest.count == 1 { return try status(id) }
        if rest.count == 2 && rest[1] == "result" { return try result(id) }
        if rest.count == 2 && rest[1] == "events" { return try events(id, request: request, context: context) }
        return nil
    }

    /// `DELETE /v1/jobs/{id}`: 202 once the cancel request is out; 404 for an unknown job,
    /// 409 for one that has finished.
    func cancel(_ id: String) async throws -> Response {
        guard client.hub.status(of: id) != nil else { throw unknown(id) }
        guard try await client.cancel(jobID: id) else {
            throw GatewayError.conflict("job \(id) has finished; there is nothing to cancel")
        }
        let body = #"{"id":"\#(id)","status":"cancelling","status_url":"\#(Self.prefix + id)"}"#
        return Response(status: .accepted, headers: [.location: Self.prefix + id, .contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: body)))
    }

    /// The 404 for a job this edge does not know.
    func unknown(_ id: String) -> GatewayError {
        .jobNotFound(id: id, keptMinutes: client.hub.finishedAgeMilliseconds / 60_000, keptJobs: client.hub.jobLimit)
    }

    static func isJobID(_ s: String) -> Bool {
        s.utf8.count == 32 && s.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }

    /// `GET /v1/jobs/{id}/result`: the result of a succeeded job.
    func result(_ id: String) throws -> Response {
        guard let s = client.hub.status(of: id) else { throw unknown(id) }
        guard s.status == "succeeded", let result = s.result else {
            throw GatewayError.resultNotFound(jobID: id, status: s.status)
        }
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: result))
    }

    func status(_ id: String) throws -> Response {
        guard let s = client.hub.status(of: id) else { throw unknown(id) }
        if s.resultRedirect && s.status == "succeeded" {
            return Response(status: .seeOther, headers: [.location: Self.prefix + id + "/result"])
        }
        var json = #"{"id":"\#(s.id)","status":"\#(s.status)""#
        json += #","percent":\#(s.percent.map { String($0) } ?? "null")"#
        json += #","message":\#(s.message.map(JSONString.quote) ?? "null")"#
        if let result = s.result { json += #","result":"# + String(buffer: result) }
        if let error = s.error { json += #","error":"# + String(buffer: error) }
        json += #","created":\#(s.created),"updated":\#(s.updated)}"#
        return Response(status: .ok, headers: [.contentType: "application/json", .cacheControl: "no-cache"], body: .init(byteBuffer: ByteBuffer(string: json)))
    }

    func events(_ id: String, request: Request, context: GatewayRequestContext) throws -> Response {
        let given = (request.headers[HTTPField.Name("Last-Event-ID")!] ?? request.uri.queryParameters.get("lastEventId")).flatMap { $0.isEmpty ? nil : $0 }
        let lastEventID = given.flatMap { Int($0) }
        let outbox = clients.open()
        guard let follow = client.hub.follow(jobID: id, lastEventID: lastEventID, outbox: outbox) else {
            clients.close(outbox)
            throw unknown(id)
        }
        var preamble: [ByteBuffer] = []
        if let given, lastEventID == nil {
            // Not one of this stream's ids (they count 1, 2, 3…): the whole history follows,
            // and the client is told why it may see events again.
            let reason = "the Last-Event-ID \(given) is not an event id of this job's stream; its whole history follows"
            preamble.append(SSEEncoder.event(name: "reset", data: #"{"reason":\#(JSONString.quote(reason))}"#))
        } else if follow.reset {
            preamble.append(SSEEncoder.event(name: "reset", data: #"{"reason":"the requested events are older than the kept history"}"#))
        }
        preamble += follow.history.map(JobHub.encode)
        // A finished job's history is all there is.
        if follow.finished { outbox.finish() }
        let hub = client.hub
        return EventStreamResponse.make(outbox: outbox, clients: clients, context: context, preamble: preamble) {
            hub.unfollow(jobID: id, follower: follow.follower)
        }
    }
}
