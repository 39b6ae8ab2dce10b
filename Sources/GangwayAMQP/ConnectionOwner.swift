import CRabbitMQ
import Foundation
import GangwayAMQPCore
import Logging
import NIOCore

/// The owner thread's side of an ``AMQPConnection``: the only code that calls rabbitmq-c.
///
/// It runs the ``ConnectionStateMachine``'s actions, reads frames, and executes commands from
/// the shared queue. Everything here is confined to that one thread, which is what makes the
/// `@unchecked Sendable` sound: the instance is handed to the thread once and never touched
/// from anywhere else.
final class ConnectionOwner: @unchecked Sendable {
    typealias PublishToken = AMQPConnection.PublishToken

    private let connection: AMQPConnection
    private var logger: Logger { connection.logger }
    private var configuration: AMQPConnectionConfiguration { connection.configuration }

    private var state: amqp_connection_state_t?
    private var machine: ConnectionStateMachine
    private var confirms = ConfirmTracker<PublishToken>()
    private var assembler = ContentAssembler(generation: 0)
    private var generation: UInt64 = 0
    /// Consumers subscribed on the current connection, by tag.
    private var active: [String: ActiveConsumer] = [:]

    private struct ActiveConsumer {
        var queue: String
        var handler: AMQPConnection.DeliveryHandler
        var maxBodyBytes: Int
    }
    private var inspectChannelOpen = false
    /// Attempts to connect that failed since the last one that succeeded.
    private var connectFailuresInARow = 0
    /// Sessions in a row whose stream consumer the broker refused while starting the stream.
    private var streamNotReadyInARow = 0
    private var lastActivity = NIODeadline.now()
    private var nextMessageID: UInt64 = 0
    private let arena = CArena()
    /// One-way frames (publishes, acks, rejects) of the round being served, written to the
    /// socket in one `send` at its end (or before anything that waits for the broker), instead
    /// of rabbitmq-c's one `send` per frame. Only on plain TCP: through TLS, rabbitmq-c writes.
    private var outbound = gw_outbuf_t()
    private var writesFramesItself = false
    private var frameMax = 0
    /// Commands taken from the shared queue that the connection went away before executing:
    /// failed with the rest when it is marked disconnected, never dropped, or their callers
    /// would wait forever.
    private var stranded: [AMQPConnection.Command] = []

    private static let publishChannel: amqp_channel_t = 1
    /// Idle rounds spent yielding before sleeping in poll; see `serve()`.
    private static let yieldsBeforeSleep = 1
    private static let inspectChannel: amqp_channel_t = 2

    struct Lost: Error {
        var reason: String
    }

    /// Flushes early when a round's frames reach this many bytes.
    private static let outboundFlushBytes = 256 * 1024
    /// A buffer grown past this (by a large message) is freed once written, not kept. Each
    /// frame appended reserves `frame_max` bytes of room, so a full round needs about
    /// `outboundFlushBytes` plus two frames.
    private static let outboundKeepBytes = 1024 * 1024

    init(connection: AMQPConnection) {
        self.connection = connection
        self.machine = ConnectionStateMachine(backoff: connection.configuration.backoff)
    }

    deinit {
        gw_outbuf_free(&outbound)
    }

    // MARK: Life cycle

    func run() {
        var action = machine.start()
        while true {
            switch action {
            case .connect:
                if shutdownRequested() {
                    action = machine.shutdown()
                    continue
                }
                do {
                    try openConnection()
                    connectFailuresInARow = 0
                    action = machine.connectSucceeded()
                } catch {
                    record(error: "\(error)")
                    // The first failure in a row is worth an operator's attention; the retries
                    // after it, every backoff step while the broker stays away, are not.
                    connectFailuresInARow += 1
                    logger.log(
                        level: connectFailuresInARow == 1 ? .warning : .info,
                        "amqp.connect.failed",
                        metadata: ["amqp.url": "\(configuration.url)", "error": "\(error)", "amqp.attempts": "\(connectFailuresInARow)"]
                    )
                    destroyConnection()
                    action = machine.connectFailed(random: Double.random(in: 0...1))
                }
            case .openSession(let generation):
                do {
                    try openSession(generation: generation)
                } catch {
                    record(error: "\(error)")
                    let streamNotReady = (error as? AMQPError)?.isStreamNotReady == true
                    streamNotReadyInARow = streamNotReady ? streamNotReadyInARow + 1 : 0
                    action = machine.sessionFailed(random: Double.random(in: 0...1))
                    var metadata: Logger.Metadata = ["error": "\(error)"]
                    if case .failInFlightAndReconnect(let ms) = action { metadata["amqp.retry_ms"] = "\(ms)" }
                    if streamNotReadyInARow == 1 {
                        // Expected once when several connections declare the same stream queue
                        // at the same time (e.g. an edge and workers starting together): not a
                        // loss worth a warning. A second time in a row is one.
                        logger.info("amqp.stream.not-ready", metadata: metadata)
                    } else {
                        logger.warning("amqp.session.failed", metadata: metadata)
                    }
                    continue
                }
                machine.sessionOpened()
                logger.info("amqp.connected", metadata: ["amqp.url": "\(configuration.url)", "amqp.generation": "\(generation)"])
                do {
                    try serve()
                    action = machine.shutdown()
                } catch {
                    record(error: "\(error)")
                    logger.warning("amqp.connection.lost", metadata: ["error": "\(error)"])
                    action = machine.connectionLost(random: Double.random(in: 0...1))
                }
            case .failInFlightAndReconnect(let ms):
                markDisconnected(reason: "connection lost")
                destroyConnection()
                action = sleep(milliseconds: ms) ? machine.backoffElapsed() : machine.shutdown()
            case .reconnect(let ms):
                action = sleep(milliseconds: ms) ? machine.backoffElapsed() : machine.shutdown()
            case .close:
                closeGracefully()
                markDisconnected(reason: "shutting down")
                finish()
                return
            case .none:
                finish()
                return
            }
        }
    }

    private func shutdownRequested() -> Bool {
        connection.shared.withLock { $0.shutdownRequested }
    }

    private func record(error: String) {
        connection.shared.withLock { $0.lastError = error }
    }

    /// Sleeps for the backoff, waking early only to shut down. Commands that arrive meanwhile
    /// were refused at enqueue time (not connected), so there is nothing to serve.
    private func sleep(milliseconds: Int) -> Bool {
        let deadline = NIODeadline.now() + .milliseconds(Int64(milliseconds))
        while NIODeadline.now() < deadline {
            if shutdownRequested() { return false }
            let left = max(1, Int((deadline - NIODeadline.now()).nanoseconds / 1_000_000))
            _ = gw_poll2(-1, connection.wakeFD, Int32(min(left, 1000)))
            gw_eventfd_drain(connection.wakeFD)
        }
        return !shutdownRequested()
    }

    private func finish() {
        let waiters = connection.shared.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.finished = true
            defer { state.finishWaiters = [] }
            return state.finishWaiters
        }
        for w in waiters { w.resume() }
    }

    /// Fails everything that was waiting on the connection that is gone.
    private func markDisconnected(reason: String) {
        let (commands, wasConnected) = connection.shared.withLock { state -> ([AMQPConnection.Command], Bool) in
            let wasConnected = state.connected
            state.connected = false
            state.blocked = false
            defer { state.commands = [] }
            return (state.commands, wasConnected)
        }
        if wasConnected { configuration.onStateChange?(false) }
        let shutdown = shutdownRequested()
        // Publishes written (perhaps in part) whose confirm has not come: the broker may have
        // them. The commands after them were never written.
        let unconfirmed: AMQPError = .unconfirmed(shutdown ? "shutting down" : reason)
        for token in confirms.reset() { token.settle(.failure(unconfirmed)) }
        let error: AMQPError = shutdown ? .shutdown : .connectionLost(reason)
        for command in stranded + commands { fail(command, with: error) }
        stranded = []
        active = [:]
    }

    private func fail(_ command: AMQPConnection.Command, with error: AMQPError) {
        switch command {
        case .publish(let publication): publication.token.settle(.failure(error))
        case .declare(_, let c): c.resume(throwing: error)
        case .unbind(_, let c): c.resume(throwing: error)
        case .purgeQueue(_, let c): c.resume(throwing: error)
        case .inspectQueue(_, let c): c.resume(throwing: error)
        case .ack, .reject, .startConsumer, .cancelConsumer: break
        }
    }

    // MARK: Connecting

    private func openConnection() throws {
        let url = configuration.url
        guard let state = amqp_new_connection() else { throw AMQPError.connectFailed("out of memory") }
        self.state = state
        // Frames left from a connection that was lost are not sent on the next one: their
        // publishes were failed with it.
        outbound.len = 0
        writesFramesItself = !url.tls
        let socket: OpaquePointer?
        if url.tls {
            socket = amqp_ssl_socket_new(state)
            guard let socket else { throw AMQPError.connectFailed("cannot create a TLS socket") }
            gw_tls_record_verify_errors(socket)
            gw_tls_clear_errors()
            if let ca = url.caCertFile {
                let rc = amqp_ssl_socket_set_cacert(socket, ca)
                guard rc == AMQP_STATUS_OK.rawValue else { throw AMQPError.connectFailed("cannot load CA certificate \(ca): \(Self.tlsStatusText(rc))") }
            }
            if let cert = url.certFile, let key = url.keyFile {
                let rc = amqp_ssl_socket_set_key(socket, cert, key)
                guard rc == AMQP_STATUS_OK.rawValue else { throw AMQPError.connectFailed("cannot load client certificate \(cert) or key \(key): \(Self.tlsStatusText(rc))") }
            }
            amqp_ssl_socket_set_verify_peer(socket, url.verifyPeer ? 1 : 0)
            amqp_ssl_socket_set_verify_hostname(socket, url.verifyHostname ? 1 : 0)
        } else {
            socket = amqp_tcp_socket_new(state)
            guard socket != nil else { throw AMQPError.connectFailed("cannot create a socket") }
        }
        var timeout = Self.makeTimeval(milliseconds: url.connectionTimeoutMilliseconds)
        let rc = amqp_socket_open_noblock(socket, url.host, Int32(url.port), &timeout)
        guard rc == AMQP_STATUS_OK.rawValue else {
            // rabbitmq-c says only "a socket error occurred" when connect(2) fails, and keeps
            // its errno to itself.
            let detail = rc == AMQP_STATUS_SOCKET_ERROR.rawValue ? "the connection was refused or the host is unreachable (is a broker listening there?)" : url.tls ? Self.tlsStatusText(rc) : Self.statusText(rc)
            throw AMQPError.connectFailed("\(url.host):\(url.port): \(detail)")
        }
        var handshake = Self.makeTimeval(milliseconds: url.connectionTimeoutMilliseconds)
        amqp_set_handshake_timeout(state, &handshake)
        var rpc = Self.makeTimeval(milliseconds: configuration.rpcTimeoutMilliseconds)
        amqp_set_rpc_timeout(state, &rpc)
        let login = gw_login_plain(state, url.vhost, 0, configuration.frameMax, Int32(url.heartbeatSeconds), url.user, url.password, configuration.name)
        if url.tls, login.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION {
            // Under TLS 1.3 a broker refuses a client certificate (or its absence) after the
            // client's side of the handshake is done: the refusal arrives at the first read.
            // When the alert is lost to the connection's reset, OpenSSL has no reason to give.
            let text = Self.tlsStatusText(login.library_error)
            let hint = text == Self.statusText(login.library_error) ? " (the broker ended the TLS session before AMQP began: does it require a client certificate, certfile and keyfile, that it did not get or does not accept?)" : ""
            throw AMQPError.connectFailed("\(url.host):\(url.port): login: \(text)\(hint)")
        }
        try check(login, "login")
        frameMax = Int(amqp_get_frame_max(state))
        amqp_channel_open(state, Self.publishChannel)
        try check(amqp_get_rpc_reply(state), "channel.open")
        amqp_confirm_select(state, Self.publishChannel)
        try check(amqp_get_rpc_reply(state), "confirm.select")
        inspectChannelOpen = false
        lastActivity = .now()
    }

    private func openSession(generation: UInt64) throws {
        guard let state else { throw Lost(reason: "no connection") }
        self.generation = generation
        assembler = ContentAssembler(generation: generation)
        try declare(configuration.topology, on: state)
        let consumers = AMQPConnection.subscriptionOrder(connection.shared.withLock { $0.consumers })
        for (tag, consumer) in consumers {
            try startConsumer(tag: tag, consumer, on: state)
        }
        streamNotReadyInARow = 0
        connection.shared.withLock { shared in
            shared.connected = true
            shared.generation = generation
            shared.lastError = nil
        }
        configuration.onStateChange?(true)
    }

    private func destroyConnection() {
        guard let state else { return }
        amqp_destroy_connection(state)
        self.state = nil
    }

    private func closeGracefully() {
        guard let state else { return }
        _ = amqp_connection_close(state, AMQP_REPLY_SUCCESS)
        destroyConnection()
    }

    // MARK: Serving

    /// Reads frames and executes commands until shutdown; throws when the connection is lost.
    private func serve() throws {
        guard let state else { throw Lost(reason: "no connection") }
        let heartbeat = Int(amqp_get_heartbeat(state))
        let pollMilliseconds = heartbeat > 0 ? min(1000, heartbeat * 250) : 1000
        let deadAfter = TimeAmount.milliseconds(Int64(heartbeat > 0 ? heartbeat * 2000 + 1000 : Int.max / 2_000_000))
        let housekeepingEvery = TimeAmount.milliseconds(Int64(pollMilliseconds))
        let socket = amqp_get_sockfd(state)
        var idleRounds = 0
        var readable = true
        var lastHousekeeping = NIODeadline.now()
        // Commands are taken by swapping this buffer with the shared one, so that neither is
        // copied or reallocated on a round.
        var commands: [AMQPConnection.Command] = []
        commands.reserveCapacity(64)
        while true {
            commands.removeAll(keepingCapacity: true)
            let (shutdown, blocked) = connection.shared.withLock { shared -> (Bool, Bool) in
                swap(&commands, &shared.commands)
                return (shared.shutdownRequested, shared.blocked && configuration.failFastWhenBlocked)
            }
            if shutdown {
                // Acks queued last (a reply confirmed just before) still go out, or the broker
                // would redeliver requests that were answered. The rest fail as shut down.
                for command in commands {
                    if case .ack = command { try execute(command, on: state) } else { stranded.append(command) }
                }
                try flushOutbound(state)
                return
            }
            // A batch of publishes and acks leaves as few full segments instead of one small
            // segment each: fewer packets for the broker to read. On plain TCP the frames are
            // gathered and written in one go; through TLS, where rabbitmq-c writes each one,
            // the socket is corked meanwhile. A command that waits for an answer (a
            // declaration) is sent uncorked, or its request would sit in the kernel.
            var corked = false
            for index in commands.indices {
                if blocked && commands[index].waitsOnBroker {
                    // A broker blocking this connection (a resource alarm) reads nothing from
                    // it until the alarm clears: what was queued before the notice came would
                    // wait that long. It fails now, not sent, as it would have at enqueue.
                    fail(commands[index], with: .blocked)
                    continue
                }
                let oneWay = commands[index].isOneWay
                if !writesFramesItself && oneWay != corked && (corked || commands.count > 1) {
                    corked = oneWay
                    _ = gw_tcp_cork(socket, corked ? 1 : 0)
                }
                do {
                    try execute(commands[index], on: state)
                } catch {
                    stranded.append(contentsOf: commands[(index + 1)...])
                    throw error
                }
            }
            try flushOutbound(state)
            if corked { _ = gw_tcp_cork(socket, 0) }
            // Read only when there is something to read: the socket polled readable, or
            // rabbitmq-c holds buffered bytes or frames (its RPCs queue frames they skip).
            // Every so often read anyway: rabbitmq-c sends its heartbeats only from inside a
            // read, and a connection that only receives would otherwise never send one.
            let now = NIODeadline.now()
            let housekeeping = now - lastHousekeeping >= housekeepingEvery
            var frames = 0
            if readable || housekeeping || amqp_frames_enqueued(state) != 0 || amqp_data_in_buffer(state) != 0 {
                frames = try drainFrames(state)
                amqp_maybe_release_buffers(state)
                readable = false
                if housekeeping { lastHousekeeping = now }
            }

            // Under load, work arrives in bursts from several tasks: give them the CPU once
            // before sleeping, so that the next burst is picked up without an eventfd wake-up.
            if !commands.isEmpty || frames > 0 {
                idleRounds = 0
            } else {
                idleRounds += 1
            }
            if idleRounds <= Self.yieldsBeforeSleep {
                sched_yield()
                // A zero-timeout poll tells whether the broker sent anything meanwhile.
                readable = gw_poll2(socket, -1, 0) & 1 != 0
                continue
            }

            let sleep = connection.shared.withLock { shared -> Bool in
                if shared.commands.isEmpty && !shared.shutdownRequested {
                    shared.sleeping = true
                    return true
                }
                return false
            }
            if sleep {
                let ready = gw_poll2(socket, connection.wakeFD, Int32(pollMilliseconds))
                connection.shared.withLock { $0.sleeping = false }
                if ready & 2 != 0 { gw_eventfd_drain(connection.wakeFD) }
                if ready & 1 != 0 {
                    readable = true
                    lastActivity = .now()
                }
                if NIODeadline.now() - lastActivity > deadAfter {
                    throw Lost(reason: "no heartbeat from the broker for \(heartbeat * 2) s")
                }
            }
        }
    }

    /// Sends a method that waits for no answer (what `amqp_basic_ack` and `amqp_basic_reject`
    /// do): gathered for the round's one write, or written by rabbitmq-c through TLS.
    private func sendOneWay<Arguments>(
        _ method: amqp_method_number_t, _ arguments: inout Arguments, on state: amqp_connection_state_t
    ) -> Int32 {
        withUnsafeMutablePointer(to: &arguments) { arguments in
            if writesFramesItself {
                return gw_outbuf_append_method(&outbound, Self.publishChannel, method, arguments, frameMax)
            }
            return amqp_send_method(state, Self.publishChannel, method, arguments)
        }
    }

    /// Writes the frames gathered so far (see `outbound`).
    private func flushOutbound(_ state: amqp_connection_state_t) throws {
        guard outbound.len > 0 else { return }
        let rc = gw_send_all(amqp_get_sockfd(state), outbound.bytes, outbound.len)
        outbound.len = 0
        if outbound.cap > Self.outboundKeepBytes { gw_outbuf_free(&outbound) }
        guard rc == 0 else { throw Lost(reason: "cannot write to the broker: \(String(cString: strerror(-rc)))") }
    }

    /// Handles every frame that can be read without blocking; returns how many.
    private func drainFrames(_ state: amqp_connection_state_t) throws -> Int {
        var zero = timeval(tv_sec: 0, tv_usec: 0)
        var frame = amqp_frame_t()
        var count = 0
        // rabbitmq-c keeps every frame it reads (a body frame is a buffer of up to frame_max)
        // until its buffers are released: released only after the drain, a large message read
        // in one go would be held twice, once in frames. What a frame holds is copied by
        // `handle`, so the buffers go once a few of them have been read.
        var bodyBytesSinceRelease = 0
        while true {
            let rc = amqp_simple_wait_frame_noblock(state, &frame, &zero)
            if rc == AMQP_STATUS_TIMEOUT.rawValue {
                if count > 0 { lastActivity = .now() }
                return count
            }
            guard rc == AMQP_STATUS_OK.rawValue else { throw Lost(reason: Self.statusText(rc)) }
            count += 1
            try handle(frame, state)
            if Int32(frame.frame_type) == AMQP_FRAME_BODY {
                bodyBytesSinceRelease += frame.payload.body_fragment.len
                if bodyBytesSinceRelease >= Self.releaseBuffersEvery {
                    amqp_maybe_release_buffers_on_channel(state, frame.channel)
                    bodyBytesSinceRelease = 0
                }
            }
        }
    }

    private func handle(_ frame: amqp_frame_t, _ state: amqp_connection_state_t) throws {
        switch Int32(frame.frame_type) {
        case AMQP_FRAME_METHOD:
            try handleMethod(frame.payload.method, channel: frame.channel, state)
        case AMQP_FRAME_HEADER:
            guard frame.channel == Self.publishChannel else { return }
            let properties = frame.payload.properties.decoded.assumingMemoryBound(to: amqp_basic_properties_t.self).pointee
            do {
                if let output = try assembler.header(bodySize: frame.payload.properties.body_size, properties: CDecode.properties(properties)) {
                    deliver(output)
                }
            } catch {
                throw Lost(reason: "protocol error: \(error)")
            }
        case AMQP_FRAME_BODY:
            guard frame.channel == Self.publishChannel else { return }
            let fragment = frame.payload.body_fragment
            do {
                if let output = try assembler.body(UnsafeRawBufferPointer(start: fragment.bytes, count: fragment.len)) {
                    deliver(output)
                }
            } catch {
                throw Lost(reason: "protocol error: \(error)")
            }
        default:
            return
        }
    }

    private func handleMethod(_ method: amqp_method_t, channel: amqp_channel_t, _ state: amqp_connection_state_t) throws {
        switch method.id {
        case GW_BASIC_DELIVER:
            let m = method.decoded.assumingMemoryBound(to: amqp_basic_deliver_t.self).pointee
            let consumerTag = CDecode.string(m.consumer_tag)
            do {
                try assembler.deliver(
                    .init(
                        consumerTag: consumerTag,
                        deliveryTag: m.delivery_tag,
                        redelivered: m.redelivered != 0,
                        exchange: CDecode.string(m.exchange),
                        routingKey: CDecode.string(m.routing_key)
                    ),
                    maxBodyBytes: active[consumerTag]?.maxBodyBytes ?? .max
                )
            } catch {
                throw Lost(reason: "protocol error: \(error)")
            }
        case GW_BASIC_RETURN:
            let m = method.decoded.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
            do {
                try assembler.returned(
                    .init(replyCode: m.reply_code, replyText: CDecode.string(m.reply_text), exchange: CDecode.string(m.exchange), routingKey: CDecode.string(m.routing_key))
                )
            } catch {
                throw Lost(reason: "protocol error: \(error)")
            }
        case GW_BASIC_ACK:
            let m = method.decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            for (token, outcome) in confirms.acked(deliveryTag: m.delivery_tag, multiple: m.multiple != 0) {
                token.settle(.success(outcome))
            }
        case GW_BASIC_NACK:
            let m = method.decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            for (token, outcome) in confirms.nacked(deliveryTag: m.delivery_tag, multiple: m.multiple != 0) {
                token.settle(.success(outcome))
            }
        case GW_BASIC_CANCEL:
            // The broker cancelled a consumer (its queue was deleted, or the node holding it
            // went away); it says so because the login asks it to (consumer_cancel_notify).
            // Reconnecting declares the queue again, from the topology, and re-subscribes.
            let m = method.decoded.assumingMemoryBound(to: amqp_basic_cancel_t.self).pointee
            let tag = CDecode.string(m.consumer_tag)
            let queue = active[tag].map { "queue \($0.queue)" } ?? "consumer \(tag)"
            throw Lost(reason: "the broker cancelled the consumer of \(queue) (deleted, or its node went away); consuming again")
        case GW_CHANNEL_CLOSE:
            let m = method.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            var ok = amqp_channel_close_ok_t()
            amqp_send_method(state, channel, GW_CHANNEL_CLOSE_OK, &ok)
            if channel == Self.inspectChannel {
                inspectChannelOpen = false
                return
            }
            throw Lost(reason: "broker closed channel \(channel): \(m.reply_code) \(CDecode.string(m.reply_text))")
        case GW_CONNECTION_CLOSE:
            let m = method.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            var ok = amqp_connection_close_ok_t()
            amqp_send_method(state, 0, GW_CONNECTION_CLOSE_OK, &ok)
            throw Lost(reason: "broker closed the connection: \(m.reply_code) \(CDecode.string(m.reply_text))")
        case GW_CONNECTION_BLOCKED:
            let m = method.decoded.assumingMemoryBound(to: amqp_connection_blocked_t.self).pointee
            logger.warning("amqp.blocked", metadata: ["reason": "\(CDecode.string(m.reason))"])
            connection.shared.withLock { $0.blocked = true }
        case GW_CONNECTION_UNBLOCKED:
            logger.info("amqp.unblocked")
            connection.shared.withLock { $0.blocked = false }
        default:
            return
        }
    }

    private func deliver(_ output: ContentAssembler.Output) {
        switch output {
        case .delivery(let delivery):
            if let consumer = active[delivery.consumerTag] {
                consumer.handler(delivery)
            }
        case .returned(let returned, _):
            confirms.returned(messageID: returned.properties.messageID, replyCode: returned.replyCode, replyText: returned.replyText)
        }
    }

    // MARK: Commands

    private func execute(_ command: AMQPConnection.Command, on state: amqp_connection_state_t) throws {
        // What rabbitmq-c sends itself must follow the frames gathered before it.
        if !command.isOneWay {
            do {
                try flushOutbound(state)
            } catch {
                // The command is taken off the queue and not among those stranded after it:
                // failed here, or whoever awaits it (a request asking whether its queue has
                // consumers, a subscriber's binding) would wait for ever.
                fail(command, with: .connectionLost((error as? Lost)?.reason ?? "\(error)"))
                throw error
            }
        }
        switch command {
        case .publish(let publication):
            let message = publication.message
            var messageID = message.properties.messageID
            if message.mandatory && messageID == nil {
                nextMessageID += 1
                messageID = "\(configuration.name)-\(nextMessageID)"
            }
            _ = confirms.published(publication.token, messageID: message.mandatory ? messageID : nil)
            var properties = arena.properties(message.properties)
            if messageID != message.properties.messageID, let messageID {
                properties._flags |= GW_FLAG_MESSAGE_ID
                properties.message_id = arena.bytes(messageID)
            }
            let exchange = arena.bytes(message.exchange)
            let routingKey = arena.bytes(message.routingKey)
            let rc = message.body.withUnsafeReadableBytes { body in
                let body = amqp_bytes_t(len: body.count, bytes: UnsafeMutableRawPointer(mutating: body.baseAddress))
                let mandatory: amqp_boolean_t = message.mandatory ? 1 : 0
                if writesFramesItself {
                    return gw_outbuf_append_publish(
                        &outbound, Self.publishChannel, exchange, routingKey, mandatory, &properties, body, frameMax
                    )
                }
                return amqp_basic_publish(state, Self.publishChannel, exchange, routingKey, mandatory, 0, &properties, body)
            }
            arena.reset()
            guard rc == AMQP_STATUS_OK.rawValue else { throw Lost(reason: "publish failed: \(Self.statusText(rc))") }
            if outbound.len >= Self.outboundFlushBytes { try flushOutbound(state) }
        case .ack(let tag, let multiple, let generation):
            guard generation == self.generation else { return }
            var ack = amqp_basic_ack_t(delivery_tag: tag, multiple: multiple ? 1 : 0)
            let rc = sendOneWay(GW_BASIC_ACK, &ack, on: state)
            guard rc == AMQP_STATUS_OK.rawValue else { throw Lost(reason: "ack failed: \(Self.statusText(rc))") }
        case .reject(let tag, let requeue, let generation):
            guard generation == self.generation else { return }
            var reject = amqp_basic_reject_t(delivery_tag: tag, requeue: requeue ? 1 : 0)
            let rc = sendOneWay(GW_BASIC_REJECT, &reject, on: state)
            guard rc == AMQP_STATUS_OK.rawValue else { throw Lost(reason: "reject failed: \(Self.statusText(rc))") }
        case .declare(let topology, let continuation):
            do {
                try declare(topology, on: state)
                continuation.resume()
            } catch let error as AMQPError {
                continuation.resume(throwing: error)
                throw Lost(reason: error.message)
            }
        case .unbind(let binding, let continuation):
            do {
                try unbind(binding, on: state)
                continuation.resume()
            } catch let error as AMQPError {
                continuation.resume(throwing: error)
                throw Lost(reason: error.message)
            }
        case .purgeQueue(let name, let continuation):
            amqp_queue_purge(state, Self.publishChannel, amqp_cstring_bytes(name))
            do {
                try check(amqp_get_rpc_reply(state), "queue.purge \(name)")
                continuation.resume()
            } catch let error as AMQPError {
                continuation.resume(throwing: error)
                throw Lost(reason: error.message)
            }
        case .inspectQueue(let name, let continuation):
            do {
                continuation.resume(returning: try inspect(queue: name, on: state))
            } catch let error as AMQPError {
                continuation.resume(throwing: error)
                if error.serverReplyCode == nil { throw Lost(reason: error.message) }
            }
        case .startConsumer(let tag):
            guard active[tag] == nil, let consumer = connection.shared.withLock({ $0.consumers[tag] }) else { return }
            try startConsumer(tag: tag, consumer, on: state)
        case .cancelConsumer(let tag):
            guard active.removeValue(forKey: tag) != nil else { return }
            amqp_basic_cancel(state, Self.publishChannel, amqp_cstring_bytes(tag))
            try check(amqp_get_rpc_reply(state), "basic.cancel")
        }
    }

    private func startConsumer(tag: String, _ consumer: AMQPConnection.Consumer, on state: amqp_connection_state_t) throws {
        let options = consumer.options
        if let spec = options.declare {
            try declareQueue(spec, on: state)
        }
        if !options.bindings.isEmpty {
            try declare(Topology(bindings: options.bindings), on: state)
        }
        amqp_basic_qos(state, Self.publishChannel, 0, options.prefetch, 0)
        try check(amqp_get_rpc_reply(state), "basic.qos")
        amqp_basic_consume(
            state, Self.publishChannel, arena.bytes(options.queue), arena.bytes(tag), 0,
            options.autoAck ? 1 : 0, options.exclusive ? 1 : 0, arena.table(options.arguments)
        )
        arena.reset()
        do {
            try check(amqp_get_rpc_reply(state), "basic.consume \(options.queue)")
        } catch let error as AMQPError where error.connectionCloseCode == 541 && options.declare?.isStream == true {
            throw AMQPError.streamNotReady(queue: options.queue)
        }
        active[tag] = ActiveConsumer(queue: options.queue, handler: consumer.handler, maxBodyBytes: options.maxBodyBytes)
    }

    private func declare(_ topology: Topology, on state: amqp_connection_state_t) throws {
        defer { arena.reset() }
        for e in topology.exchanges where !e.name.isEmpty && !e.name.hasPrefix("amq.") {
            amqp_exchange_declare(
                state, Self.publishChannel, arena.bytes(e.name), arena.bytes(e.type), 0,
                e.durable ? 1 : 0, e.autoDelete ? 1 : 0, e.internal ? 1 : 0, arena.table(e.arguments)
            )
            try check(amqp_get_rpc_reply(state), "exchange.declare \(e.name)")
        }
        for q in topology.queues {
            try declareQueue(q, on: state)
        }
        for b in topology.bindings {
            switch b.destinationType {
            case .queue:
                amqp_queue_bind(state, Self.publishChannel, arena.bytes(b.destination), arena.bytes(b.source), arena.bytes(b.routingKey), arena.table(b.arguments))
            case .exchange:
                amqp_exchange_bind(state, Self.publishChannel, arena.bytes(b.destination), arena.bytes(b.source), arena.bytes(b.routingKey), arena.table(b.arguments))
            }
            try check(amqp_get_rpc_reply(state), "bind \(b.source) → \(b.destination)")
        }
    }

    private func unbind(_ b: BindingSpec, on state: amqp_connection_state_t) throws {
        defer { arena.reset() }
        switch b.destinationType {
        case .queue:
            amqp_queue_unbind(state, Self.publishChannel, arena.bytes(b.destination), arena.bytes(b.source), arena.bytes(b.routingKey), arena.table(b.arguments))
        case .exchange:
            amqp_exchange_unbind(state, Self.publishChannel, arena.bytes(b.destination), arena.bytes(b.source), arena.bytes(b.routingKey), arena.table(b.arguments))
        }
        try check(amqp_get_rpc_reply(state), "unbind \(b.source) → \(b.destination)")
    }

    private func declareQueue(_ q: QueueSpec, on state: amqp_connection_state_t) throws {
        defer { arena.reset() }
        amqp_queue_declare(
            state, Self.publishChannel, arena.bytes(q.name), 0, q.durable ? 1 : 0, q.exclusive ? 1 : 0,
            q.autoDelete ? 1 : 0, arena.table(q.arguments)
        )
        try check(amqp_get_rpc_reply(state), "queue.declare \(q.name)")
    }

    private func inspect(queue: String, on state: amqp_connection_state_t) throws -> QueueInfo? {
        if !inspectChannelOpen {
            amqp_channel_open(state, Self.inspectChannel)
            try check(amqp_get_rpc_reply(state), "channel.open", channel: Self.inspectChannel)
            inspectChannelOpen = true
        }
        let ok = amqp_queue_declare(state, Self.inspectChannel, amqp_cstring_bytes(queue), 1, 0, 0, 0, amqp_empty_table)
        do {
            try check(amqp_get_rpc_reply(state), "queue.declare passive \(queue)", channel: Self.inspectChannel)
        } catch let error as AMQPError where error.serverReplyCode == 404 {
            inspectChannelOpen = false
            return nil
        } catch let error as AMQPError where error.serverReplyCode != nil {
            inspectChannelOpen = false
            throw error
        }
        guard let ok else { return nil }
        return QueueInfo(messageCount: ok.pointee.message_count, consumerCount: ok.pointee.consumer_count)
    }

    // MARK: Helpers

    /// Turns an RPC reply into an error; answers the broker's close with close-ok.
    private func check(_ reply: amqp_rpc_reply_t, _ what: String, channel: amqp_channel_t = publishChannel) throws {
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            return
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            throw AMQPError.connectionLost("\(what): \(Self.statusText(reply.library_error))")
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            guard let state else { throw AMQPError.connectionLost(what) }
            switch reply.reply.id {
            case GW_CONNECTION_CLOSE:
                let m = reply.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                var ok = amqp_connection_close_ok_t()
                amqp_send_method(state, 0, GW_CONNECTION_CLOSE_OK, &ok)
                throw AMQPError.connectionClosed(code: m.reply_code, text: CDecode.string(m.reply_text), during: what)
            case GW_CHANNEL_CLOSE:
                let m = reply.reply.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                // The broker closed the channel the RPC ran on; it waits for our close-ok.
                var ok = amqp_channel_close_ok_t()
                amqp_send_method(state, channel, GW_CHANNEL_CLOSE_OK, &ok)
                throw AMQPError.serverClosed(code: m.reply_code, text: "\(what): \(CDecode.string(m.reply_text))")
            default:
                throw AMQPError.connectionLost("\(what): unexpected server reply \(reply.reply.id)")
            }
        default:
            throw AMQPError.connectionLost("\(what): no reply")
        }
    }

    /// Body bytes read in one drain after which rabbitmq-c's frame buffers are released.
    static let releaseBuffersEvery = 1 << 20

    static func statusText(_ rc: Int32) -> String {
        String(cString: amqp_error_string2(rc))
    }

    /// rabbitmq-c's text for a failed TLS call, with OpenSSL's reasons when it recorded any
    /// on this thread: "SSL handshake failed (certificate verify failed)" where rabbitmq-c
    /// alone says only the first part.
    static func tlsStatusText(_ rc: Int32) -> String {
        var reasons = [UInt8](repeating: 0, count: 512)
        let count = reasons.withUnsafeMutableBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { gw_tls_take_errors($0.baseAddress, $0.count) }
        }
        let text = statusText(rc)
        guard count > 0 else { return text }
        return "\(text) (\(String(decoding: reasons.prefix(while: { $0 != 0 }), as: UTF8.self)))"
    }

    static func makeTimeval(milliseconds: Int) -> timeval {
        timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
    }
}
