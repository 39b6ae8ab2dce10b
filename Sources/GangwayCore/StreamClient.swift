import GangwayAMQPCore
import GangwayConfig
import NIOCore

/// The streamed-reply shape: one request, many reply messages (`x-part` 0, 1, 2…, `x-final`
/// on the last), handed on in order as they arrive.
public struct StreamClient: Sendable {
    let client: RequestReplyClient
    static let errorHeader = WireContract.Header.error

    public init(client: RequestReplyClient) {
        self.client = client
    }

    /// A stream whose first part has arrived: the response head, and the parts in order.
    public struct Opened: Sendable {
        /// Status, headers and content type from part 0; its body is empty.
        public var head: GatewayReply
        public var parts: PartStream
        let correlationID: String
        let bus: any MessageBus

        /// Tells the worker to stop (the client went away). Best effort: the worker also stops
        /// at its deadline.
        public func cancel() {
            try? bus.publish(WireContract.cancel(id: correlationID)) { _ in }
        }

        /// Ends the stream here and tells the worker to stop: nobody will read what it sends.
        public func stop() {
            parts.close()
            cancel()
        }
    }

    /// Opens the stream and waits for part 0.
    /// - Throws: ``GatewayError``: 503 when nobody serves the route, 504 when part 0 does not
    ///   come within the idle timeout or the deadline, 502 for a malformed part.
    public func open(_ request: GatewayRequest, idleMilliseconds: Int) async throws(GatewayError) -> Opened {
        let route = request.route
        try await client.checkConsumers(request)
        let correlationID = client.nextCorrelationID()
        let correlator = client.correlator
        let (stream, slot): (AsyncThrowingStream<Delivery, any Error>, Correlator.StreamSlot)
        do {
            (stream, slot) = try correlator.openStream(id: correlationID, idleMilliseconds: idleMilliseconds, timeoutMilliseconds: route.timeoutMilliseconds)
        } catch {
            throw RequestReplyClient.error(for: error, route: route)
        }
        var message = client.makeMessage(request, correlationID: correlationID)
        message.properties.headers["x-idle-timeout"] = .int(Int64(idleMilliseconds))
        do {
            try client.publish(message) { failure in correlator.closeStream(id: correlationID, with: failure) }
        } catch {
            correlator.closeStream(id: correlationID)
            throw error
        }
        let parts = PartStream(stream: stream, slot: slot, route: route.name, correlationID: correlationID, correlator: correlator)
        let first: Delivery
        do {
            guard let delivery = try await parts.nextDelivery() else {
                throw GatewayError.badReply(route: route.name, reason: "the stream ended before part 0")
            }
            first = delivery
        } catch let error as GatewayError {
            // Before part 0 an idle gap is simply no answer in time.
            if error.status == 504 { throw GatewayError.timeout(route: route.name, milliseconds: idleMilliseconds) }
            throw error
        } catch {
            throw Self.map(error, routeName: route.name)
        }
        var head = try RequestReplyClient.decodeReply(first, route: route.name)
        parts.pushFront(head.body, error: first.properties.headers[Self.errorHeader]?.stringValue)
        head.body = ByteBuffer()
        return Opened(head: head, parts: parts, correlationID: correlationID, bus: client.bus)
    }

    static func map(_ error: any Error, routeName: String) -> GatewayError {
        switch error {
        case let e as GatewayError: return e
        case Correlator.Failure.idle: return .streamIdle(route: routeName)
        case Correlator.Failure.timeout: return .streamTimeout(route: routeName)
        case Correlator.Failure.unroutable(let reason): return .noConsumer(route: routeName, reason: reason)
        case Correlator.Failure.unavailable(let reason): return .brokerUnavailable(reason)
        case Correlator.Failure.overflow: return .streamOverflow(route: routeName)
        case Correlator.Failure.shuttingDown: return .shuttingDown
        default: return .brokerUnavailable("\(error)")
        }
    }

    /// The bodies of a stream's parts, in order. Ends after the final part; throws
    /// ``GatewayError`` when the stream fails midway (idle gap, deadline, malformed part, or a
    /// part carrying `x-error`).
    ///
    /// `@unchecked Sendable`: it is read by exactly one task, the response writer, which is
    /// handed it once; nothing else touches it.
    public final class PartStream: @unchecked Sendable {
        private var base: AsyncThrowingStream<Delivery, any Error>.AsyncIterator
        private let slot: Correlator.StreamSlot
        private var reorderer = PartReorderer<Delivery>()
        private var ready: [Delivery] = []
        private var front: [(ByteBuffer, String?)] = []
        private var finished = false
        let route: String
        let correlationID: String
        let correlator: Correlator

        init(stream: AsyncThrowingStream<Delivery, any Error>, slot: Correlator.StreamSlot, route: String, correlationID: String, correlator: Correlator) {
            self.base = stream.makeAsyncIterator()
            self.slot = slot
            self.route = route
            self.correlationID = correlationID
            self.correlator = correlator
        }

        func pushFront(_ body: ByteBuffer, error: String?) {
            front.insert((body, error), at: 0)
        }

        /// The next part's body, or nil after the final part.
        public func next() async throws -> ByteBuffer? {
            if !front.isEmpty {
                let (body, error) = front.removeFirst()
                if let error { throw GatewayError.badReply(route: route, reason: "the worker reported: \(error)") }
                return body
            }
            guard let d = try await nextDelivery() else {
                correlator.closeStream(id: correlationID)
                return nil
            }
            if let error = d.properties.headers[StreamClient.errorHeader]?.stringValue {
                correlator.closeStream(id: correlationID)
                throw GatewayError.badReply(route: route, reason: "the worker reported: \(error)")
            }
            if let dropped = d.droppedBody {
                correlator.closeStream(id: correlationID)
                throw GatewayError.replyTooLarge(route: route, size: dropped.size, limit: dropped.limit)
            }
            return d.body
        }

        /// Ends the stream early (the client went away).
        public func close() {
            correlator.closeStream(id: correlationID)
        }

        func nextDelivery() async throws -> Delivery? {
            while ready.isEmpty {
                if finished { return nil }
                let d: Delivery?
                do {
                    d = try await base.next()
                } catch {
                    throw StreamClient.map(error, routeName: route)
                }
                guard let d else {
                    // The parts ended before the final one without a failure: the reading task
                    // was cancelled. Not the end of the reply, which it would look like.
                    if Task.isCancelled { throw CancellationError() }
                    throw GatewayError.badReply(route: route, reason: "the stream ended before its final part")
                }
                let headers = d.properties.headers
                // A plain reply (no x-part) is a stream of one part.
                let index = headers[WireContract.Header.part].map { $0.intValue.map(Int.init) ?? -1 } ?? 0
                let final = headers[WireContract.Header.part] == nil ? true : (headers[WireContract.Header.final]?.boolValue ?? false)
                do {
                    ready = try reorderer.accept(d, index: index, final: final)
                } catch {
                    correlator.closeStream(id: correlationID)
                    throw GatewayError.badReply(route: route, reason: error.description)
                }
                if reorderer.isFinished { finished = true }
            }
            // Only now off the stream's buffer: parts held back until a missing one comes
            // count against it too, or a gap that never closes would grow memory.
            let d = ready.removeFirst()
            slot.taken(d)
            return d
        }
    }
}
