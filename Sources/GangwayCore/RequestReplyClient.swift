import GangwayAMQPCore
import GangwayConfig
import Logging
import NIOCore
import Synchronization

/// Sends a routed request as an AMQP message and waits for the worker's reply: the
/// request/reply shape of wire contract v1.
public final class RequestReplyClient: Sendable {
    let bus: any MessageBus
    let correlator: Correlator
    private let presence: ConsumerPresence
    /// `<instance id>.`: correlation ids are it and a count.
    private let correlationPrefix: String
    private let counter = Atomic<UInt64>(0)

    /// Headers that describe one hop and must not be copied from a reply to the response.
    static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "content-length",
    ]

    public init(bus: any MessageBus, correlator: Correlator, presence: ConsumerPresence, instanceID: String) {
        self.bus = bus
        self.correlator = correlator
        self.presence = presence
        self.correlationPrefix = instanceID + "."
    }

    /// - Throws: ``GatewayError``: 503 when nobody serves the route or the broker is down,
    ///   504 at the deadline, 502 for a malformed reply.
    public func send(_ request: GatewayRequest) async throws(GatewayError) -> GatewayReply {
        try await finish(try await start(request))
    }

    /// A request on its way: published, its reply not yet taken.
    public struct Pending: Sendable {
        let correlationID: String
        let route: Route
    }

    /// Checks for consumers, opens the reply slot and publishes; does not wait for the reply.
    /// - Throws: ``GatewayError``: 503 when nobody serves the route or the broker is down.
    public func start(_ request: GatewayRequest) async throws(GatewayError) -> Pending {
        let prepared = try await prepare(request)
        do {
            try bus.publish(prepared.message, onSettled: prepared.onSettled)
        } catch {
            correlator.cancel(id: prepared.pending.correlationID)
            throw .brokerUnavailable("\(error)")
        }
        return prepared.pending
    }

    /// Starts several requests, publishing them together in one hand-off to the publisher.
    /// - Returns: each request's pending reply, or why it could not start (as ``start(_:)``
    ///   would throw it), in order.
    public func startAll(_ requests: [GatewayRequest]) async -> [Result<Pending, GatewayError>] {
        var results: [Result<Pending, GatewayError>] = []
        results.reserveCapacity(requests.count)
        var batch: [(message: OutboundMessage, onSettled: @Sendable (Result<PublishOutcome, any Error>) -> Void)] = []
        var started: [Int] = []
        for request in requests {
            do {
                let prepared = try await prepare(request)
                batch.append((prepared.message, prepared.onSettled))
                started.append(results.count)
                results.append(.success(prepared.pending))
            } catch {
                results.append(.failure(error))
            }
        }
        guard !batch.isEmpty else { return results }
        do {
            try bus.publish(batch)
        } catch {
            for index in started {
                if case .success(let pending) = results[index] { correlator.cancel(id: pending.correlationID) }
                results[index] = .failure(.brokerUnavailable("\(error)"))
            }
        }
        return results
    }

    /// Sends a request without a task in the common case, and calls `completion` with what
    /// ``send(_:)`` would return or throw.
    ///
    /// When the route's queue is known to have consumers (``ConsumerPresence/isKnownPresent(queue:now:)``),
    /// the request is published from the calling thread and `completion` is called from the
    /// thread that settles it: the reply consumer's, the publisher's (a return or a lost
    /// connection) or the deadline sweeper's; it must be short and must not block. Only when
    /// the broker has to be asked about consumers does a task do the work.
    public func send(_ request: GatewayRequest, completion: @escaping @Sendable (Result<GatewayReply, GatewayError>) -> Void) {
        if !consumersKnown(for: request) {
            Task {
                do throws(GatewayError) {
                    completion(.success(try await self.send(request)))
                } catch {
                    completion(.failure(error))
                }
            }
            return
        }
        // The callback keeps what its answer needs of the route, not the route: it is destroyed
        // on the thread that settles it, and every field it holds would be released there.
        let (name, timeout) = (request.route.name, request.route.timeoutMilliseconds)
        let prepared: Prepared
        do {
            // The slot is opened with its callback: the reply, a return or a failed publish
            // settles it exactly once.
            prepared = try prepareMessage(request) { result in
                completion(Self.outcome(result, routeName: name, timeoutMilliseconds: timeout))
            }
        } catch {
            completion(.failure(error))
            return
        }
        do {
            try bus.publish(prepared.message, onSettled: prepared.onSettled)
        } catch {
            correlator.fail(id: prepared.pending.correlationID, with: .unavailable("\(error)"))
        }
    }

    /// Starts several requests without a task, as ``send(_:completion:)`` sends one: when
    /// every request's queue is known to have consumers, each reply slot is opened with its
    /// callback and the requests are published together, in one hand-off to the publisher.
    /// - Parameter whenSettled: called once for each request, with its index: from the thread
    ///   that settles it (as for ``send(_:completion:)``), or at once when it cannot start.
    /// - Returns: false, having started nothing, when the broker has to be asked about some
    ///   queue's consumers first: use ``startAll(_:)`` from a task then.
    public func startAll(
        _ requests: [GatewayRequest],
        whenSettled: @escaping @Sendable (_ index: Int, _ result: Result<GatewayReply, GatewayError>) -> Void
    ) -> Bool {
        guard requests.allSatisfy(consumersKnown(for:)) else { return false }
        var batch: [(message: OutboundMessage, onSettled: @Sendable (Result<PublishOutcome, any Error>) -> Void)] = []
        var started: [String] = []
        batch.reserveCapacity(requests.count)
        for (index, request) in requests.enumerated() {
            // As in ``send(_:completion:)``: the callback keeps the route's name and timeout only.
            let (name, timeout) = (request.route.name, request.route.timeoutMilliseconds)
            do {
                let prepared = try prepareMessage(request) { result in
                    whenSettled(index, Self.outcome(result, routeName: name, timeoutMilliseconds: timeout))
                }
                batch.append((prepared.message, prepared.onSettled))
                started.append(prepared.pending.correlationID)
            } catch {
                whenSettled(index, .failure(error))
            }
        }
        guard !batch.isEmpty else { return true }
        do {
            try bus.publish(batch)
        } catch {
            for id in started { correlator.fail(id: id, with: .unavailable("\(error)")) }
        }
        return true
    }

    /// The route's queue is known to have consumers (or the route names none to check).
    private func consumersKnown(for request: GatewayRequest) -> Bool {
        guard let queue = request.route.queue?.render(request.parameters) else { return true }
        return presence.isKnownPresent(queue: queue)
    }

    typealias Prepared = (pending: Pending, message: OutboundMessage, onSettled: @Sendable (Result<PublishOutcome, any Error>) -> Void)

    /// Everything before the publish: the consumer check, the message and its open reply slot.
    /// The confirm is not awaited: the reply is the real answer, and a return (no queue bound)
    /// or nack arrives before the reply could; `onSettled` (on the publisher's thread) then
    /// fails the slot.
    private func prepare(_ request: GatewayRequest) async throws(GatewayError) -> Prepared {
        try await checkConsumers(request)
        return try prepareMessage(request)
    }

    /// The message and its open reply slot, once the consumer check has passed.
    /// - Parameter whenReplied: settles the slot instead of a later wait, when given.
    private func prepareMessage(
        _ request: GatewayRequest,
        whenReplied: (@Sendable (Result<Delivery, Correlator.Failure>) -> Void)? = nil
    ) throws(GatewayError) -> Prepared {
        let correlationID = nextCorrelationID()
        let message = makeMessage(request, correlationID: correlationID)
        let registered: Bool
        do {
            registered = try correlator.register(id: correlationID, timeoutMilliseconds: request.route.timeoutMilliseconds, whenReplied: whenReplied)
        } catch {
            throw Self.error(for: error, route: request.route)
        }
        guard registered else { throw .brokerUnavailable("correlation id collision") }
        let correlator = self.correlator
        // One closure, not a settlement wrapped around a failing one: a confirmed publish
        // (nearly all of them) only frees it, on the publisher's thread.
        let onSettled: @Sendable (Result<PublishOutcome, any Error>) -> Void = { result in
            if let failure = Self.failure(for: result) { correlator.fail(id: correlationID, with: failure) }
        }
        return (Pending(correlationID: correlationID, route: request.route), message, onSettled)
    }

    /// Waits for a started request's reply and checks it against the contract.
    /// - Throws: ``GatewayError``: 503 when it turned out unroutable or the broker went away,
    ///   504 at the deadline, 502 for a malformed reply.
    public func finish(_ pending: Pending) async throws(GatewayError) -> GatewayReply {
        let delivery: Delivery
        do {
            delivery = try await correlator.wait(id: pending.correlationID)
        } catch let failure as Correlator.Failure {
            throw Self.error(for: failure, route: pending.route)
        } catch {
            throw .shuttingDown
        }
        return try Self.decodeReply(delivery, route: pending.route.name)
    }

    /// Waits for the replies of several started requests together (one suspension for all).
    /// - Returns: each one's reply or error, in order, as ``finish(_:)`` would give it.
    public func finishAll(_ pendings: [Pending]) async -> [Result<GatewayReply, GatewayError>] {
        let results = await correlator.waitAll(ids: pendings.map(\.correlationID))
        return zip(pendings, results).map { pending, result in Self.outcome(result, route: pending.route) }
    }

    /// What a settled reply slot means to the client: the checked reply, or the error.
    static func outcome(_ result: Result<Delivery, Correlator.Failure>, route: Route) -> Result<GatewayReply, GatewayError> {
        outcome(result, routeName: route.name, timeoutMilliseconds: route.timeoutMilliseconds)
    }

    static func outcome(
        _ result: Result<Delivery, Correlator.Failure>,
        routeName: String,
        timeoutMilliseconds: Int
    ) -> Result<GatewayReply, GatewayError> {
        switch result {
        case .success(let delivery):
            return Result { () throws(GatewayError) in try decodeReply(delivery, route: routeName) }
        case .failure(let failure):
            return .failure(error(for: failure, routeName: routeName, timeoutMilliseconds: timeoutMilliseconds))
        }
    }

    static func error(for failure: Correlator.Failure, route: Route) -> GatewayError {
        error(for: failure, routeName: route.name, timeoutMilliseconds: route.timeoutMilliseconds)
    }

    static func error(for failure: Correlator.Failure, routeName: String, timeoutMilliseconds: Int) -> GatewayError {
        switch failure {
        case .timeout: return .timeout(route: routeName, milliseconds: timeoutMilliseconds)
        case .unavailable(let reason): return .brokerUnavailable(reason)
        case .unroutable(let reason): return .noConsumer(route: routeName, reason: reason)
        case .cancelled, .idle, .overflow, .shuttingDown: return .shuttingDown
        }
    }

    /// The request message of wire contract v1 for a routed request.
    func makeMessage(_ request: GatewayRequest, correlationID: String) -> OutboundMessage {
        let route = request.route
        let epochMs = WireContract.epochMilliseconds()
        var headers: AMQPTable = [
            WireContract.Header.method: .string(request.method),
            WireContract.Header.path: .string(request.path),
            WireContract.Header.route: .string(route.name),
            WireContract.Header.requestID: .string(request.requestID),
            WireContract.Header.traceparent: .string(request.traceparent),
            WireContract.Header.deadline: .int(epochMs + Int64(route.timeoutMilliseconds)),
        ]
        if !request.query.isEmpty { headers[WireContract.Header.query] = .string(request.query) }
        for (name, value) in request.headers where route.forwardHeaders.contains(name) {
            let key = WireContract.Header.headerPrefix + name
            if case .string(let existing)? = headers[key] {
                headers[key] = .string(existing + ", " + value)
            } else {
                headers[key] = .string(value)
            }
        }
        for (name, value) in request.parameters {
            headers["x-param-" + name] = .string(value)
        }
        let properties = AMQPProperties(
            contentType: request.header("content-type"),
            contentEncoding: request.header("content-encoding"),
            headers: headers,
            deliveryMode: 1,
            correlationID: correlationID,
            replyTo: bus.replyQueue,
            expiration: String(route.timeoutMilliseconds),
            messageID: correlationID,
            timestamp: UInt64(epochMs / 1000),
            type: route.name,
            appID: WireContract.appID
        )
        return OutboundMessage(
            exchange: route.exchange,
            routingKey: route.routingKey.render(request.parameters),
            mandatory: true,
            properties: properties,
            body: request.body
        )
    }

    /// 503 at once when the route's queue has no consumers or does not exist.
    func checkConsumers(_ request: GatewayRequest) async throws(GatewayError) {
        guard let queue = request.route.queue?.render(request.parameters) else { return }
        switch await presence.check(queue: queue) {
        case .present: return
        case .none: throw .noConsumer(route: request.route.name, reason: "queue '\(queue)' has no consumers")
        case .missingQueue: throw .noConsumer(route: request.route.name, reason: "queue '\(queue)' does not exist")
        }
    }

    /// Publishes a request without awaiting its confirm; `onFailure` hears (on the publisher's
    /// thread) of a return, a nack or a lost connection. Throws at once when it cannot be sent.
    func publish(_ message: OutboundMessage, onFailure: @escaping @Sendable (Correlator.Failure) -> Void) throws(GatewayError) {
        do {
            try bus.publish(message, onSettled: Self.settlement(onFailure))
        } catch {
            throw .brokerUnavailable("\(error)")
        }
    }

    /// What a request's publish outcome means for its reply slot: only a confirm leaves it
    /// waiting for the reply.
    static func settlement(_ onFailure: @escaping @Sendable (Correlator.Failure) -> Void) -> @Sendable (Result<PublishOutcome, any Error>) -> Void {
        { result in
            if let failure = failure(for: result) { onFailure(failure) }
        }
    }

    /// What a publish outcome other than a confirm does to the request's reply slot.
    static func failure(for result: Result<PublishOutcome, any Error>) -> Correlator.Failure? {
        switch result {
        case .success(.confirmed): return nil
        case .success(.returned(let code, let text)): return .unroutable("the broker could not route it (\(code) \(text))")
        case .success(.nacked): return .unavailable("the broker refused the message")
        case .failure(let error): return .unavailable("\(error)")
        }
    }

    func nextCorrelationID() -> String {
        correlationPrefix + String(counter.wrappingAdd(1, ordering: .relaxed).newValue)
    }

    /// Checks a reply against the contract: `x-status` a final HTTP status 200...599 when
    /// present, `x-header-*` values text. The body of a status that carries no content (204,
    /// 205, 304) is dropped: written after such a response's head, it would be read as the
    /// start of the connection's next response.
    public static func decodeReply(_ delivery: Delivery, route: String) throws(GatewayError) -> GatewayReply {
        if let dropped = delivery.droppedBody {
            throw .replyTooLarge(route: route, size: dropped.size, limit: dropped.limit)
        }
        let props = delivery.properties
        var status = 200
        if let raw = props.headers[WireContract.Header.status] {
            // An informational status (1xx) is not an answer: the edge cannot switch protocols
            // or send an interim response for a worker.
            guard let s = raw.intValue, (200...599).contains(s) else {
                throw .badReply(route: route, reason: "x-status must be a final HTTP status 200...599, got \(raw.stringValue.map { "'\($0)'" } ?? "a non-scalar value")")
            }
            status = Int(s)
        }
        var headers: [(name: String, value: String)] = []
        headers.reserveCapacity(props.headers.count)
        for (key, value) in props.headers {
            guard let name = responseHeaderName(key) else { continue }
            guard !name.isEmpty else {
                throw .badReply(route: route, reason: "'\(key)' is not a valid header name")
            }
            guard let text = value.stringValue, WireContract.isSingleLine(text) else {
                throw .badReply(route: route, reason: "header '\(key)' must be a single line of text")
            }
            if hopByHop.contains(name) || name == "content-type" { continue }
            headers.append((name, text))
        }
        if let ct = props.contentType, !WireContract.isSingleLine(ct) {
            throw .badReply(route: route, reason: "content_type must be a single line")
        }
        let body = GatewayReply.carriesContent(status: status) ? delivery.body : ByteBuffer()
        return GatewayReply(status: status, headers: headers, contentType: props.contentType, contentEncoding: props.contentEncoding, body: body)
    }

    /// The response header a reply's `x-header-<name>` key names, lower-cased (a token's bytes
    /// are ASCII, so ASCII lower case is all there is): nil when `key` has not that prefix, empty
    /// when what follows it is not a token (RFC 9110 §5.1). Read as bytes: a reply has a few such
    /// keys, and the edge decodes one reply per request.
    static func responseHeaderName(_ key: String) -> String? {
        enum Scan { case otherKey, notToken, token(hasUpperCase: Bool) }
        let prefix = WireContract.Header.headerPrefixBytes
        let prefixLength = prefix.utf8CodeUnitCount
        var key = key
        let scan = key.withUTF8 { bytes -> Scan in
            guard bytes.count >= prefixLength else { return .otherKey }
            for i in 0..<prefixLength where bytes[i] != prefix.utf8Start[i] { return .otherKey }
            guard bytes.count > prefixLength else { return .notToken }
            var upper = false
            for i in prefixLength..<bytes.count {
                guard RoutesFile.isTokenByte(bytes[i]) else { return .notToken }
                upper = upper || (bytes[i] >= UInt8(ascii: "A") && bytes[i] <= UInt8(ascii: "Z"))
            }
            return .token(hasUpperCase: upper)
        }
        switch scan {
        case .otherKey: return nil
        case .notToken: return ""
        case .token(let hasUpperCase):
            let name = key[key.utf8.index(key.startIndex, offsetBy: prefixLength)...]
            return hasUpperCase ? name.lowercased() : String(name)
        }
    }

}
