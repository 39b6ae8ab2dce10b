import GangwayAMQPCore
import GangwayConfig
import NIOCore

/// The job shape: a request becomes a persistent message on a durable queue, answered at once
/// with its id once the broker has confirmed it; progress comes later as events.
public struct JobClient: Sendable {
    let client: RequestReplyClient
    public let hub: JobHub
    let claims: (any ClaimRegistry)?

    /// - Parameter claims: makes an `Idempotency-Key` hold across edges; without it, per edge.
    public init(client: RequestReplyClient, hub: JobHub, claims: (any ClaimRegistry)? = nil) {
        self.client = client
        self.hub = hub
        self.claims = claims
    }

    /// Publishes the job and waits for the broker's confirm: a returned id means the broker
    /// has it. Then announces it on `gangway.events` (`job.<id>.queued`, `x-seq` 0) so that
    /// every edge knows it.
    /// - Throws: ``GatewayError``: 503 when nothing is bound to take it or the broker refused
    ///   it or is unreachable.
    public func submit(_ request: GatewayRequest) async throws(GatewayError) -> String {
        let id = RandomID.hex128()
        var idempotencyKey: String?
        if let key = request.header("idempotency-key") {
            guard !key.isEmpty, key.utf8.count <= 200, WireContract.isSingleLine(key) else {
                throw .badRequest("Idempotency-Key must be 1 to 200 characters on one line")
            }
            let scoped = "\(request.route.name) \(key)"
            if let existing = hub.claim(idempotencyKey: scoped, for: id) { return existing }
            if let existing = try await claimAcrossEdges(scoped, for: id) { return existing }
            idempotencyKey = scoped
        }
        do {
            return try await publish(request, id: id, idempotencyKey: idempotencyKey)
        } catch {
            if let idempotencyKey {
                // This edge no longer answers the key with a job it cannot vouch for. The claim
                // at the broker is given back only when the job certainly did not get there:
                // given back otherwise, a retry could start a second one. A job that did get
                // there tells every edge its key with its first event.
                hub.release(idempotencyKey: idempotencyKey, for: id)
                if !error.jobMayExist, let claims { await Self.giveBack(idempotencyKey, to: claims) }
            }
            throw error.error
        }
    }

    /// Gives a claim back at once if the broker can be reached, or else keeps trying in the
    /// background (the usual case: the job failed because the connection is down), for half
    /// the hour after which an unused claim queue expires. Retrying later could not remove a
    /// newer claim from another edge: the queue and the claim in it stay until then.
    static func giveBack(_ key: String, to claims: any ClaimRegistry, retryFor: Duration = .seconds(1800)) async {
        if (try? await claims.releaseClaim(key)) != nil { return }
        retryInBackground(for: retryFor) { (try? await claims.releaseClaim(key)) != nil }
    }

    /// Finds out, once the broker can be reached, whether a claim whose publish was not
    /// confirmed got there, by claiming again: a confirmed claim means the queue was empty, so
    /// the first never arrived, and this one, which no other edge can have displaced, is given
    /// back. A nacked one means a claim is there, this edge's or another's: nothing tells which,
    /// and the key stays held.
    static func settleUncertainClaim(_ key: String, for value: String, with claims: any ClaimRegistry, retryFor: Duration = .seconds(1800)) {
        retryInBackground(for: retryFor) {
            do {
                if try await claims.claim(key, for: value) { await giveBack(key, to: claims, retryFor: retryFor) }
                return true
            } catch {
                return false
            }
        }
    }

    /// Runs `attempt` in the background until it reports done, backing off from 250 ms to 30 s,
    /// for at most `retryFor`.
    static func retryInBackground(for retryFor: Duration, _ attempt: @escaping @Sendable () async -> Bool) {
        let giveUp = ContinuousClock.now + retryFor
        Task {
            var delay = Duration.milliseconds(250)
            while ContinuousClock.now + delay < giveUp {
                try? await Task.sleep(for: delay)
                if await attempt() { return }
                delay = min(delay * 2, .seconds(30))
            }
        }
    }

    /// Why a job was not confirmed, and whether the broker may have it all the same.
    struct JobPublishFailure: Error {
        let error: GatewayError
        let jobMayExist: Bool
    }

    /// Claims the key at the broker, where all edges meet.
    /// - Returns: nil when `id` now holds the key; otherwise the job that holds it, learnt from
    ///   its `queued` notice (which the winning edge sends within milliseconds of its claim).
    private func claimAcrossEdges(_ key: String, for id: String) async throws(GatewayError) -> String? {
        guard let claims else { return nil }
        let won: Bool
        do {
            won = try await claims.claim(key, for: id)
        } catch {
            hub.release(idempotencyKey: key, for: id)
            // A claim the broker may have would hold the key with no job behind it.
            var unsure = ""
            if error.publishMayHaveReachedBroker {
                Self.settleUncertainClaim(key, for: id, with: claims)
                unsure = "; the edge checks whether the broker got the claim once it can reach it, and frees the key if it did not (409 until then)"
            }
            throw .brokerUnavailable("could not claim the Idempotency-Key: \(error)\(unsure)")
        }
        if won { return nil }
        hub.release(idempotencyKey: key, for: id)
        for _ in 0..<60 {
            if let existing = hub.job(forIdempotencyKey: key) { return existing }
            try? await Task.sleep(for: .milliseconds(50))
        }
        throw .conflict("a job with this Idempotency-Key was submitted and is not known here yet; retry shortly (a claim whose job never reached the broker holds the key for an hour)")
    }

    private func publish(_ request: GatewayRequest, id: String, idempotencyKey: String?) async throws(JobPublishFailure) -> String {
        var message = client.makeMessage(request, correlationID: id)
        message.properties.deliveryMode = 2
        message.properties.replyTo = nil
        message.properties.expiration = nil
        message.properties.headers[WireContract.Header.deadline] = nil
        message.properties.headers[WireContract.Header.jobID] = .string(id)
        if let idempotencyKey {
            // Echoed by the worker on the job's events (contract v1), so that every edge learns
            // the key from them even if the queued notice below never goes out.
            message.properties.headers[WireContract.Header.idempotencyKey] = .string(idempotencyKey)
        }
        let outcome: PublishOutcome
        do {
            outcome = try await client.bus.publish(message, confirmWithin: .milliseconds(request.route.timeoutMilliseconds))
        } catch {
            guard error.publishMayHaveReachedBroker else {
                throw JobPublishFailure(error: .brokerUnavailable("\(error)"), jobMayExist: false)
            }
            let retry = idempotencyKey == nil ? "" : "; a retry with the same Idempotency-Key answers with it once its worker has reported, 409 until then (for an hour if the broker does not have it)"
            throw JobPublishFailure(error: .brokerUnavailable("\(error); if it has the job, it runs as job \(id)\(retry)"), jobMayExist: true)
        }
        switch outcome {
        case .confirmed: break
        case .returned(let code, let text):
            throw JobPublishFailure(error: .noConsumer(route: request.route.name, reason: "no queue takes the job (\(code) \(text))"), jobMayExist: false)
        case .nacked:
            throw JobPublishFailure(error: .brokerUnavailable("the broker refused the job"), jobMayExist: false)
        }
        let json = #"{"id":"\#(id)","status":"queued"}"#
        hub.record(jobID: id, kind: "queued", seq: 0, body: ByteBuffer(string: json))
        var headers: AMQPTable = [:]
        if let idempotencyKey {
            hub.remember(idempotencyKey: idempotencyKey, for: id)
            headers[WireContract.Header.idempotencyKey] = .string(idempotencyKey)
        }
        if request.route.resultRedirect {
            hub.setResultRedirect(for: id)
            headers[WireContract.Header.resultRedirect] = .bool(true)
        }
        let queued = WireContract.jobEvent(jobID: id, kind: "queued", seq: 0, json: json, appID: WireContract.appID, extraHeaders: headers)
        // The job is safe already; other edges learn of it from this or from its first event,
        // so the client waits for this confirm only briefly.
        _ = try? await client.bus.publish(queued, confirmWithin: .seconds(1))
        return id
    }
}

extension JobClient {
    /// Asks the worker running a job to stop: a cancel message on `gangway.cancel` that the
    /// worker SDK turns into Task cancellation; the worker then reports `job.<id>.cancelled`.
    /// - Returns: false for an unknown or finished job.
    public func cancel(jobID: String) async throws(GatewayError) -> Bool {
        guard let status = hub.status(of: jobID), !status.isFinished else { return false }
        // Kept in the cancel log, so that a worker that is not running now learns of it before
        // it takes the job.
        let outcome: PublishOutcome
        do {
            outcome = try await client.bus.publish(WireContract.cancel(id: jobID), confirmWithin: defaultConfirmTimeout)
        } catch {
            throw .brokerUnavailable("\(error)")
        }
        switch outcome {
        case .confirmed: return true
        case .returned(let code, let text):
            throw .brokerUnavailable("the cancel request reached no queue (\(code) \(text)): is \(WireContract.cancelLogQueue.name) gone?")
        case .nacked:
            throw .brokerUnavailable("the broker refused the cancel request")
        }
    }
}

enum RandomID {
    static func hex128() -> String {
        func hex(_ v: UInt64) -> String {
            let s = String(v, radix: 16)
            return String(repeating: "0", count: 16 - s.count) + s
        }
        return hex(.random(in: .min ... .max)) + hex(.random(in: .min ... .max))
    }
}
