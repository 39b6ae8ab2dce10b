import GangwayAMQPCore
import GangwayConfig
import GangwayCore
import NIOCore
import Synchronization
import Testing

/// A claim registry with the broker's rules: one holder per key, first come first served, and
/// a stale holder removed only by a compare-and-remove. No IO.
final class ScriptedClaims: ClaimRegistry {
    let holders = Mutex<[String: ClaimHolder]>([:])

    func claim(_ key: String, for value: String) async throws -> Bool {
        holders.withLock { h in
            guard h[key] == nil else { return false }
            h[key] = ClaimHolder(value: value, claimedAt: WireContract.epochMilliseconds())
            return true
        }
    }

    func releaseClaim(_ key: String) async throws {
        holders.withLock { _ = $0.removeValue(forKey: key) }
    }

    func inspectClaim(_ key: String, removeIf isStale: @escaping @Sendable (ClaimHolder) -> Bool) async throws -> ClaimLookup {
        holders.withLock { h in
            guard let holder = h[key] else { return .free }
            guard isStale(holder) else { return .held(holder) }
            h[key] = nil
            return .removed(holder)
        }
    }
}

@Suite("Job submission: Idempotency-Key claims left behind by an edge that never published the job")
struct JobClaimTests {
    func request(key: String) throws -> GatewayRequest {
        let route = Route(
            name: "render",
            method: "POST",
            path: try PathTemplate("/v1/jobs/render"),
            shape: .job,
            exchange: "",
            routingKey: try KeyTemplate("jobs.render"),
            queue: try KeyTemplate("jobs.render"),
            timeoutMilliseconds: 1000,
            forwardHeaders: [],
            maxBodyBytes: 1000
        )
        return GatewayRequest(
            route: route, parameters: [:], method: "POST", path: "/v1/jobs/render", query: "",
            headers: [("idempotency-key", key)], body: ByteBuffer(), requestID: "rid", traceparent: ""
        )
    }

    func client(_ claims: ScriptedClaims, hub: JobHub = JobHub(), staleAfter: Int64 = 60_000) -> (JobClient, ScriptedBus) {
        let bus = ScriptedBus()
        let requestReply = RequestReplyClient(bus: bus, correlator: Correlator(), presence: ConsumerPresence(bus: bus), instanceID: "e1")
        return (JobClient(client: requestReply, hub: hub, claims: claims, staleClaimMilliseconds: staleAfter), bus)
    }

    @Test("a stale claim whose job no edge knows is removed and the key claimed again: a new job, then that job for every repeat")
    func staleClaim() async throws {
        let claims = ScriptedClaims()
        claims.holders.withLock { $0["render k1"] = ClaimHolder(value: "never-published", claimedAt: WireContract.epochMilliseconds() - 120_000) }
        let (jobs, bus) = client(claims)
        let id = try await jobs.submit(try request(key: "k1"))
        #expect(id != "never-published")
        #expect(claims.holders.withLock { $0["render k1"]?.value } == id)
        #expect(bus.published.withLock { $0.filter { $0.properties.messageID == id || $0.properties.correlationID == id }.count } >= 1, "the job was published")
        #expect(try await jobs.submit(try request(key: "k1")) == id)
    }

    @Test("a claim whose job this edge knows from its events, though not from its notice, answers with that job")
    func knownHolder() async throws {
        let claims = ScriptedClaims()
        let hub = JobHub()
        hub.record(jobID: "running-elsewhere", kind: "progress", seq: 1, body: ByteBuffer(string: #"{"percent":10}"#))
        claims.holders.withLock { $0["render k2"] = ClaimHolder(value: "running-elsewhere", claimedAt: WireContract.epochMilliseconds() - 600_000) }
        let (jobs, bus) = client(claims, hub: hub)
        #expect(try await jobs.submit(try request(key: "k2")) == "running-elsewhere")
        #expect(bus.published.withLock { $0.isEmpty }, "nothing was published")
        #expect(claims.holders.withLock { $0["render k2"]?.value } == "running-elsewhere", "the claim stays")
    }

    @Test("a recent claim whose job is not known yet is left alone: 409, retry shortly")
    func recentClaim() async throws {
        let claims = ScriptedClaims()
        claims.holders.withLock { $0["render k3"] = ClaimHolder(value: "in-progress", claimedAt: WireContract.epochMilliseconds() - 1_000) }
        let (jobs, bus) = client(claims)
        await #expect {
            try await jobs.submit(try request(key: "k3"))
        } throws: { error in
            (error as? GatewayError)?.status == 409
        }
        #expect(claims.holders.withLock { $0["render k3"]?.value } == "in-progress")
        #expect(bus.published.withLock { $0.isEmpty })
    }
}
