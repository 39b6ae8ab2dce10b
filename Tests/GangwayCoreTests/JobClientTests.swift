import GangwayAMQPCore
import GangwayConfig
@testable import GangwayCore
import NIOCore
import Synchronization
import Testing

/// A bus whose publishes fail with a given error: no IO.
final class FailingBus: MessageBus {
    let replyQueue = "gangway.reply.test"
    let isReady = true
    let error: any Error
    let published = Mutex<[OutboundMessage]>([])

    init(_ error: any Error) {
        self.error = error
    }

    func publish(_ message: OutboundMessage) async throws -> PublishOutcome {
        published.withLock { $0.append(message) }
        throw error
    }

    func publish(_ message: OutboundMessage, onSettled: @escaping @Sendable (Result<PublishOutcome, any Error>) -> Void) throws {
        published.withLock { $0.append(message) }
        throw error
    }

    func consumerCount(queue: String) async throws -> UInt32? { 1 }
}

/// A bus that sends and never hears back, as when the broker blocks publishers.
final class SilentBus: MessageBus {
    let replyQueue = "gangway.reply.test"
    let isReady = true
    let published = Mutex<[OutboundMessage]>([])

    func publish(_ message: OutboundMessage) async throws -> PublishOutcome {
        try await publish(message, confirmWithin: .seconds(3600))
    }

    func publish(_ message: OutboundMessage, onSettled: @escaping @Sendable (Result<PublishOutcome, any Error>) -> Void) throws {
        published.withLock { $0.append(message) }
    }

    func consumerCount(queue: String) async throws -> UInt32? { 1 }
}

/// A publish failure that says whether the broker may have the message.
struct ScriptedPublishFailure: PublishFailure, CustomStringConvertible {
    let brokerMayHaveMessage: Bool
    var description: String { brokerMayHaveMessage ? "lost before the confirm" : "never sent" }
}

/// Claims that always win, and a record of those given back; the first `unreachable`
/// attempts to give one back fail, as when the broker cannot be reached.
final class RecordingClaims: ClaimRegistry {
    let released = Mutex<[String]>([])
    let attempts = Mutex(0)
    let unreachable: Int
    /// What the claims answer, in turn; then they win.
    let claimResults: Mutex<[Result<Bool, any Error>]>
    let claimed = Mutex(0)

    init(unreachable: Int = 0, claimResults: [Result<Bool, any Error>] = []) {
        self.unreachable = unreachable
        self.claimResults = Mutex(claimResults)
    }

    struct Unreachable: Error {}

    func claim(_ key: String, for value: String) async throws -> Bool {
        claimed.withLock { $0 += 1 }
        let next = claimResults.withLock { $0.isEmpty ? nil : $0.removeFirst() }
        return try next?.get() ?? true
    }

    func releaseClaim(_ key: String) async throws {
        let attempt = attempts.withLock { n -> Int in
            n += 1
            return n
        }
        guard attempt > unreachable else { throw Unreachable() }
        released.withLock { $0.append(key) }
    }
}

@Suite("Job submission: what a failed publish does to an Idempotency-Key")
struct JobClientTests {
    func request(key: String?) throws -> GatewayRequest {
        let route = Route(
            name: "render",
            method: "POST",
            path: try PathTemplate("/v1/jobs/render"),
            shape: .job,
            exchange: "gangway.jobs",
            routingKey: try KeyTemplate("jobs.render"),
            timeoutMilliseconds: 1000,
            maxBodyBytes: 1000
        )
        return GatewayRequest(
            route: route,
            parameters: [:],
            method: "POST",
            path: "/v1/jobs/render",
            query: "",
            headers: key.map { [("idempotency-key", $0)] } ?? [],
            body: ByteBuffer(string: "{}"),
            requestID: "rid",
            traceparent: "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"
        )
    }

    func client(_ bus: any MessageBus, hub: JobHub, claims: RecordingClaims) -> JobClient {
        let client = RequestReplyClient(bus: bus, correlator: Correlator(), presence: ConsumerPresence(bus: bus), instanceID: "edge1")
        return JobClient(client: client, hub: hub, claims: claims)
    }

    @Test(
        "a job the broker may have keeps its key's claim; one it certainly lacks gives the claim back",
        arguments: [true, false]
    )
    func claimAfterFailure(mayHave: Bool) async throws {
        let hub = JobHub()
        let claims = RecordingClaims()
        let bus = FailingBus(ScriptedPublishFailure(brokerMayHaveMessage: mayHave))
        let jobs = client(bus, hub: hub, claims: claims)
        let error = await #expect(throws: GatewayError.self) { try await jobs.submit(try request(key: "k1")) }
        #expect(error?.status == 503)
        #expect(claims.released.withLock { $0 } == (mayHave ? [] : ["render k1"]))
        // Either way this edge does not answer the key with a job it cannot vouch for.
        #expect(hub.job(forIdempotencyKey: "render k1") == nil)
        // The client is told the job may run, and under which id.
        let id = try #require(bus.published.withLock { $0.first?.properties.headers[WireContract.Header.jobID]?.stringValue })
        #expect(error?.detail.contains("runs as job \(id)") == mayHave)
        #expect(error?.detail.contains("same Idempotency-Key") == mayHave)
    }

    @Test("an error that cannot say counts as one the broker may have")
    func unknownFailure() async throws {
        struct Opaque: Error {}
        let claims = RecordingClaims()
        let jobs = client(FailingBus(Opaque()), hub: JobHub(), claims: claims)
        await #expect(throws: GatewayError.self) { try await jobs.submit(try request(key: "k2")) }
        #expect(claims.released.withLock { $0 }.isEmpty)
    }

    @Test("the job message carries its scoped Idempotency-Key, for the worker to echo on its events")
    func keyOnTheJob() async throws {
        let bus = ScriptedBus()
        let hub = JobHub()
        let jobs = client(bus, hub: hub, claims: RecordingClaims())
        let id = try await jobs.submit(try request(key: "k3"))
        let published = bus.published.withLock { $0 }
        let job = try #require(published.first)
        #expect(job.properties.headers[WireContract.Header.jobID] == .string(id))
        #expect(job.properties.headers[WireContract.Header.idempotencyKey] == "render k3")
        #expect(WireContract.echoedJobHeaders(job.properties.headers) == [WireContract.Header.idempotencyKey: "render k3"])
        #expect(hub.job(forIdempotencyKey: "render k3") == id)
        // Without a key, nothing to echo.
        let plain = try await jobs.submit(try request(key: nil))
        let second = try #require(bus.published.withLock { $0 }.first { $0.properties.headers[WireContract.Header.jobID] == .string(plain) && $0.exchange == "gangway.jobs" })
        #expect(second.properties.headers[WireContract.Header.idempotencyKey] == nil)
        #expect(WireContract.echoedJobHeaders(second.properties.headers).isEmpty)
    }

    @Test("a claim that cannot be given back at once is given back once the broker can be reached")
    func giveBackLater() async throws {
        let claims = RecordingClaims(unreachable: 3)
        let bus = FailingBus(ScriptedPublishFailure(brokerMayHaveMessage: false))
        let jobs = client(bus, hub: JobHub(), claims: claims)
        await #expect(throws: GatewayError.self) { try await jobs.submit(try request(key: "k4")) }
        // The first attempt failed on the spot; the retries back off from 250 ms.
        #expect(claims.released.withLock { $0 }.isEmpty)
        let deadline = ContinuousClock.now + .seconds(10)
        while claims.released.withLock({ $0 }).isEmpty && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(claims.released.withLock { $0 } == ["render k4"])
        #expect(claims.attempts.withLock { $0 } == 4)
    }

    @Test("retries stop when their time is up")
    func giveBackGivesUp() async throws {
        let claims = RecordingClaims(unreachable: .max)
        await JobClient.giveBack("k5", to: claims, retryFor: .milliseconds(1400))
        try await Task.sleep(for: .milliseconds(2200))
        // At once, then after 250 and 500 ms more; the next, 1 s later (at 1.75 s), would pass
        // the limit. The margins leave room for a loaded machine's late wake-ups.
        #expect(claims.attempts.withLock { $0 } == 3)
        #expect(claims.released.withLock { $0 }.isEmpty)
    }

    @Test("a job the broker does not confirm within the route's timeout gets a 503 naming it, and keeps its claim")
    func unconfirmedInTime() async throws {
        let claims = RecordingClaims()
        let bus = SilentBus()
        let jobs = client(bus, hub: JobHub(), claims: claims)
        let start = ContinuousClock.now
        let error = await #expect(throws: GatewayError.self) { try await jobs.submit(try request(key: "k6")) }
        #expect(ContinuousClock.now - start >= .milliseconds(1000))
        #expect(error?.status == 503)
        let id = try #require(bus.published.withLock { $0.first?.properties.headers[WireContract.Header.jobID]?.stringValue })
        #expect(error?.detail.contains("did not confirm the message within 1000 ms") == true)
        #expect(error?.detail.contains("runs as job \(id)") == true)
        #expect(claims.released.withLock { $0 }.isEmpty)
    }

    @Test(
        "a claim the broker may have is checked by claiming again: confirmed, it is given back; nacked, the key stays held",
        arguments: [true, false]
    )
    func uncertainClaim(secondWins: Bool) async throws {
        let claims = RecordingClaims(claimResults: [.failure(ScriptedPublishFailure(brokerMayHaveMessage: true)), .success(secondWins)])
        let jobs = client(ScriptedBus(), hub: JobHub(), claims: claims)
        let error = await #expect(throws: GatewayError.self) { try await jobs.submit(try request(key: "k7")) }
        #expect(error?.status == 503 && error?.detail.contains("frees the key if it did not") == true)
        let deadline = ContinuousClock.now + .seconds(5)
        while claims.claimed.withLock({ $0 }) < 2 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        try await Task.sleep(for: .milliseconds(100))
        #expect(claims.claimed.withLock { $0 } == 2)
        #expect(claims.released.withLock { $0 } == (secondWins ? ["render k7"] : []))
    }

    @Test("a claim that certainly did not reach the broker is not checked: there is nothing to free")
    func unsentClaim() async throws {
        let claims = RecordingClaims(claimResults: [.failure(ScriptedPublishFailure(brokerMayHaveMessage: false))])
        let jobs = client(ScriptedBus(), hub: JobHub(), claims: claims)
        let error = await #expect(throws: GatewayError.self) { try await jobs.submit(try request(key: "k8")) }
        #expect(error?.detail.contains("frees the key") == false)
        try await Task.sleep(for: .milliseconds(600))
        #expect(claims.claimed.withLock { $0 } == 1 && claims.released.withLock { $0 }.isEmpty)
    }
}
