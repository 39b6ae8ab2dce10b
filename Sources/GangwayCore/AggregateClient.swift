import GangwayAMQPCore
import GangwayConfig
import NIOCore
import Synchronization

// JSONSerialization: validating and reading leg replies is off the pass-through path.
import Foundation

/// The aggregate shape: one request fans out to N request/reply legs under one deadline, and
/// the answers are merged into one JSON object `{"<key>": <answer>, …}`.
///
/// Each leg is an ordinary request/reply with its own correlation id, so a leg nobody serves
/// fails at once (503) rather than at the deadline. Legs run in parallel, except those that
/// take a value from an earlier leg's reply (`use`), which start when that leg has answered.
/// A JSON answer is embedded as it came (validated, not re-encoded); any other body as a
/// string.
public struct AggregateClient: Sendable {
    let client: RequestReplyClient

    public init(client: RequestReplyClient) {
        self.client = client
    }

    enum Outcome: Sendable {
        case answered(GatewayReply, isJSON: Bool)
        case failed(status: Int, reason: String)
    }

    /// ``send(_:)`` without a task in the common case, and calls `completion` on `loop` with
    /// what it would return or throw.
    ///
    /// When no leg waits for another and every leg's queue is known to have consumers, the legs
    /// are published as one batch from the calling thread, each reply slot opened with a
    /// callback; once the last leg is settled, the answers are checked and merged on `loop`
    /// (their bodies may be large: not on the reply consumer's thread). Otherwise a task runs
    /// ``send(_:)``, on `executor` when one is given.
    public func send(
        _ request: GatewayRequest,
        on loop: any EventLoop,
        executor: (any TaskExecutor)? = nil,
        completion: @escaping @Sendable (Result<GatewayReply, GatewayError>) -> Void
    ) {
        if let spec = request.route.aggregate, spec.legs.allSatisfy({ $0.uses.isEmpty }),
            sendWithoutTask(request, spec: spec, on: loop, completion: completion)
        {
            return
        }
        Task(executorPreference: executor) {
            let result: Result<GatewayReply, GatewayError>
            do throws(GatewayError) {
                result = .success(try await send(request))
            } catch {
                result = .failure(error)
            }
            if loop.inEventLoop {
                completion(result)
            } else {
                loop.execute { completion(result) }
            }
        }
    }

    /// - Returns: false, having sent nothing, when a task must do it.
    private func sendWithoutTask(
        _ request: GatewayRequest,
        spec: AggregateSpec,
        on loop: any EventLoop,
        completion: @escaping @Sendable (Result<GatewayReply, GatewayError>) -> Void
    ) -> Bool {
        let deadline = NIODeadline.now() + .milliseconds(Int64(request.route.timeoutMilliseconds))
        let (requests, legIndices, early) = unchainedLegRequests(spec, request: request, deadline: deadline)
        let route = request.route.name
        let collector = LegCollector(answers: early, waiting: requests.count) { answers in
            loop.execute {
                completion(Result { () throws(GatewayError) in try merge(spec: spec, route: route, answers: answers) })
            }
        }
        guard !requests.isEmpty else {
            collector.finishNow()
            return true
        }
        return client.startAll(requests) { [legIndices] index, result in
            collector.settle(legIndices[index], with: result)
        }
    }

    /// The request of each leg of a route whose legs do not chain, with the index of its leg,
    /// and an answer already for each leg that cannot be sent (its time is up).
    private func unchainedLegRequests(
        _ spec: AggregateSpec,
        request: GatewayRequest,
        deadline: NIODeadline
    ) -> (requests: [GatewayRequest], legIndices: [Int], answers: [Result<GatewayReply, GatewayError>?]) {
        var answers = [Result<GatewayReply, GatewayError>?](repeating: nil, count: spec.legs.count)
        var requests: [GatewayRequest] = []
        var legIndices: [Int] = []
        for (index, leg) in spec.legs.enumerated() {
            do {
                requests.append(try legRequest(leg, request: request, extra: [:], deadline: deadline))
                legIndices.append(index)
            } catch {
                answers[index] = .failure(error)
            }
        }
        return (requests, legIndices, answers)
    }

    /// The response from each leg's answer, in the order of `spec.legs`, checked against the
    /// route's rules.
    func merge(spec: AggregateSpec, route: String, answers: [Result<GatewayReply, GatewayError>?]) throws(GatewayError) -> GatewayReply {
        try merge(spec: spec, route: route, outcomes: zip(spec.legs, answers).map { leg, answer in answer.map { judge($0, leg: leg) } })
    }

    /// The legs' answers as they come, from whichever threads settle them; the last one in
    /// runs `done`.
    final class LegCollector: Sendable {
        private struct State {
            var answers: [Result<GatewayReply, GatewayError>?]
            var waiting: Int
        }

        private let state: Mutex<State>
        private let done: @Sendable ([Result<GatewayReply, GatewayError>?]) -> Void

        init(answers: [Result<GatewayReply, GatewayError>?], waiting: Int, done: @escaping @Sendable ([Result<GatewayReply, GatewayError>?]) -> Void) {
            self.state = Mutex(State(answers: answers, waiting: waiting))
            self.done = done
        }

        func settle(_ index: Int, with answer: Result<GatewayReply, GatewayError>) {
            let all: [Result<GatewayReply, GatewayError>?]? = state.withLock { s in
                s.answers[index] = answer
                s.waiting -= 1
                return s.waiting == 0 ? s.answers : nil
            }
            if let all { done(all) }
        }

        /// Nothing to wait for.
        func finishNow() {
            done(state.withLock { $0.answers })
        }
    }

    /// - Throws: ``GatewayError``: 502 naming the failed legs under policy `all`, or when no
    ///   leg answered under `partial`.
    public func send(_ request: GatewayRequest) async throws(GatewayError) -> GatewayReply {
        guard let spec = request.route.aggregate else { throw .badRequest("not an aggregate route") }
        let deadline = NIODeadline.now() + .milliseconds(Int64(request.route.timeoutMilliseconds))
        var outcomes: [String: Outcome] = [:]
        if spec.legs.allSatisfy({ $0.uses.isEmpty }) {
            // No leg waits for another: publish them all together, then wait for all at once.
            let (requests, legIndices, early) = unchainedLegRequests(spec, request: request, deadline: deadline)
            var answers = early
            var started: [(pending: RequestReplyClient.Pending, leg: Int)] = []
            for (result, leg) in zip(await client.startAll(requests), legIndices) {
                switch result {
                case .success(let pending): started.append((pending, leg))
                case .failure(let error): answers[leg] = .failure(error)
                }
            }
            for ((_, leg), reply) in zip(started, await client.finishAll(started.map(\.pending))) {
                answers[leg] = reply
            }
            return try merge(spec: spec, route: request.route.name, answers: answers)
        }
        var pending: [(key: String, pending: RequestReplyClient.Pending, leg: AggregateSpec.Leg)] = []
        var started: Set<String> = []
        // Publishing does not wait, so this task publishes every leg that can start, then takes
        // replies; a chained leg starts as soon as the legs it reads from have answered. No
        // child task per leg: all legs are in flight at once all the same.
        while outcomes.count < spec.legs.count {
            for leg in spec.legs where !started.contains(leg.key) {
                guard leg.uses.values.allSatisfy({ outcomes[$0.leg] != nil }) else { continue }
                started.insert(leg.key)
                switch Self.inputs(for: leg, from: outcomes) {
                case .failure(let reason):
                    outcomes[leg.key] = .failed(status: 502, reason: reason.description)
                case .success(let values):
                    do {
                        pending.append((leg.key, try await start(leg, request: request, extra: values, deadline: deadline), leg))
                    } catch {
                        outcomes[leg.key] = .failed(status: error.status, reason: Self.reason(error))
                    }
                }
            }
            guard !pending.isEmpty else { continue }
            // Take first the reply that unblocks a chained leg, if any.
            let waitedOn = Set(spec.legs.filter { !started.contains($0.key) }.flatMap { $0.uses.values.map(\.leg) })
            let index = pending.firstIndex { waitedOn.contains($0.key) } ?? 0
            let next = pending.remove(at: index)
            outcomes[next.key] = await finish(next.pending, leg: next.leg)
        }
        return try merge(spec: spec, route: request.route.name, outcomes: spec.legs.map { outcomes[$0.key] })
    }

    private func start(_ leg: AggregateSpec.Leg, request: GatewayRequest, extra: [String: String], deadline: NIODeadline) async throws(GatewayError) -> RequestReplyClient.Pending {
        try await client.start(try legRequest(leg, request: request, extra: extra, deadline: deadline))
    }

    /// The request one leg sends: the leg's route with what is left of the deadline, chained
    /// values as parameters, and the body the leg is to get.
    private func legRequest(_ leg: AggregateSpec.Leg, request: GatewayRequest, extra: [String: String], deadline: NIODeadline) throws(GatewayError) -> GatewayRequest {
        let remaining = Int((deadline - NIODeadline.now()).nanoseconds / 1_000_000)
        guard remaining > 0 else { throw .timeout(route: leg.route.name, milliseconds: 0) }
        var route = leg.route
        route.timeoutMilliseconds = min(route.timeoutMilliseconds, remaining)
        var legRequest = request
        legRequest.route = route
        legRequest.parameters.merge(extra) { _, new in new }
        if let template = leg.bodyTemplate {
            legRequest.body = ByteBuffer(string: template.render(legRequest.parameters, escape: JSONString.escapeContents))
            legRequest.headers.removeAll { $0.name == "content-type" || $0.name == "content-encoding" }
            legRequest.headers.append(("content-type", leg.bodyContentType))
        } else if !leg.forwardBody {
            legRequest.body = ByteBuffer()
            legRequest.headers.removeAll { $0.name == "content-type" || $0.name == "content-encoding" }
        }
        return legRequest
    }

    private func finish(_ pending: RequestReplyClient.Pending, leg: AggregateSpec.Leg) async -> Outcome {
        do {
            return judge(.success(try await client.finish(pending)), leg: leg)
        } catch {
            return judge(.failure(error), leg: leg)
        }
    }

    /// What a leg's answer counts as under the route's rules.
    private func judge(_ result: Result<GatewayReply, GatewayError>, leg: AggregateSpec.Leg) -> Outcome {
        switch result {
        case .failure(let error):
            return .failed(status: error.status, reason: Self.reason(error))
        case .success(let reply):
            if reply.status >= 400 && !leg.acceptedStatuses.contains(reply.status) {
                return .failed(status: reply.status, reason: "status \(reply.status)")
            }
            let isJSON = Self.isJSON(reply.contentType)
            if isJSON && !JSONValidator.isValid(reply.body) {
                return .failed(status: 502, reason: "declared JSON but the body is not valid JSON")
            }
            return .answered(reply, isJSON: isJSON)
        }
    }

    static func reason(_ error: GatewayError) -> String {
        "\(error.status) \(error.title): \(error.detail)"
    }

    /// Values a chained leg takes from earlier replies, or why it cannot run.
    static func inputs(for leg: AggregateSpec.Leg, from outcomes: [String: Outcome]) -> Result<[String: String], ChainError> {
        var values: [String: String] = [:]
        for (name, reference) in leg.uses {
            guard case .answered(let reply, true)? = outcomes[reference.leg] else {
                return .failure(ChainError("needs '\(reference.leg)', which did not answer with JSON"))
            }
            guard let json = parse(reply.body), let value = resolve(reference.pointer, in: json) else {
                return .failure(ChainError("no value at \(reference) in the reply of '\(reference.leg)'"))
            }
            guard RouteTable.isRoutingSafe(value) else {
                return .failure(ChainError("the value at \(reference) cannot go into a routing key"))
            }
            values[name] = value
        }
        return .success(values)
    }

    struct ChainError: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    /// The response: `outcomes` holds each leg's, in the order of `spec.legs`.
    func merge(spec: AggregateSpec, route: String, outcomes: [Outcome?]) throws(GatewayError) -> GatewayReply {
        var failures: [(key: String, reason: String, status: Int)] = []
        for (leg, outcome) in zip(spec.legs, outcomes) {
            if case .failed(let status, let reason)? = outcome { failures.append((leg.key, reason, status)) }
        }
        if !failures.isEmpty && (spec.policy == .all || failures.count == spec.legs.count) {
            throw .legsFailed(route: route, failures: failures.map { ($0.key, $0.reason) })
        }
        var body = ByteBuffer()
        var headers: [(name: String, value: String)] = []
        body.writeStaticString("{")
        var first = true
        for (leg, outcome) in zip(spec.legs, outcomes) {
            guard case .answered(let reply, let isJSON)? = outcome else { continue }
            if !first { body.writeStaticString(",") }
            first = false
            body.writeString(JSONString.quote(leg.key))
            body.writeStaticString(":")
            if isJSON {
                var part = reply.body
                body.writeBuffer(&part)
            } else {
                body.writeString(JSONString.quote(String(buffer: reply.body)))
            }
            for (name, value) in reply.headers where leg.keepHeaders.contains(name) {
                headers.append(("\(leg.key)-\(name)", value))
            }
        }
        if !failures.isEmpty {
            body.writeString(first ? "" : ",")
            body.writeStaticString("\"errors\":{")
            for (i, f) in failures.enumerated() {
                if i > 0 { body.writeStaticString(",") }
                body.writeString("\(JSONString.quote(f.key)):{\"status\":\(f.status),\"detail\":\(JSONString.quote(f.reason))}")
            }
            body.writeStaticString("}")
            headers.append(("x-gangway-partial", "true"))
        }
        body.writeStaticString("}")
        return GatewayReply(status: 200, headers: headers, contentType: "application/json", contentEncoding: nil, body: body)
    }

    /// `application/json` or `…+json`, parameters and case aside. Runs for every leg, so it
    /// looks at the UTF-8 bytes instead of building strings.
    static func isJSON(_ contentType: String?) -> Bool {
        guard var contentType else { return false }
        return contentType.withUTF8 { bytes in
            var end = bytes.firstIndex(of: UInt8(ascii: ";")) ?? bytes.endIndex
            var start = bytes.startIndex
            while start < end, bytes[start] == UInt8(ascii: " ") || bytes[start] == UInt8(ascii: "\t") { start += 1 }
            while end > start, bytes[end - 1] == UInt8(ascii: " ") || bytes[end - 1] == UInt8(ascii: "\t") { end -= 1 }
            let mime = UnsafeBufferPointer(rebasing: bytes[start..<end])
            return equalsIgnoringCase(mime, "application/json") || (mime.count > 5 && equalsIgnoringCase(UnsafeBufferPointer(rebasing: mime[(mime.count - 5)...]), "+json"))
        }
    }

    private static func equalsIgnoringCase(_ bytes: UnsafeBufferPointer<UInt8>, _ lowercase: StaticString) -> Bool {
        guard bytes.count == lowercase.utf8CodeUnitCount else { return false }
        let expected = UnsafeBufferPointer(start: lowercase.utf8Start, count: lowercase.utf8CodeUnitCount)
        for (byte, want) in zip(bytes, expected) {
            let lowered = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte + 32 : byte
            if lowered != want { return false }
        }
        return true
    }

    static func parse(_ body: ByteBuffer) -> Any? {
        let data = Data(body.readableBytesView)
        return try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
    }

    /// RFC 6901 resolution; scalars become text.
    static func resolve(_ pointer: [String], in json: Any) -> String? {
        var node: Any = json
        for token in pointer {
            if let object = node as? [String: Any], let next = object[token] {
                node = next
            } else if let array = node as? [Any], let index = Int(token), array.indices.contains(index) {
                node = array[index]
            } else {
                return nil
            }
        }
        switch node {
        case let s as String: return s
        case let n as NSNumber: return n.stringValue
        default: return nil
        }
    }

}
