import GangwayAMQPCore

/// One compiled, validated route: what the edge does with a matching request.
public struct Route: Sendable, Hashable {
    public enum Shape: String, Sendable, Hashable, CaseIterable {
        case requestReply = "request-reply"
        case aggregate
        case stream
        case gather
        case job
    }

    /// When a `gather` stops collecting replies (besides its deadline).
    public struct GatherSpec: Sendable, Hashable {
        /// Stop once this many replies are in.
        public var expect: Int?
        /// Answer with the first `first` replies.
        public var first: Int?

        public init(expect: Int? = nil, first: Int? = nil) {
            self.expect = expect
            self.first = first
        }

        /// Replies after which collecting stops, if any.
        public var enough: Int? {
            switch (expect, first) {
            case (let e?, let f?): return min(e, f)
            case (let e?, nil): return e
            case (nil, let f?): return f
            case (nil, nil): return nil
            }
        }
    }

    /// Bounded label for logs and metrics, and the `type` / `x-route` of the message.
    public var name: String
    /// Upper-case HTTP method.
    public var method: String
    public var path: PathTemplate
    public var shape: Shape
    public var exchange: String
    public var routingKey: KeyTemplate
    /// The queue whose consumers serve this route, for the fast "no consumer" 503. Taken from
    /// the route file or, when absent, from the topology's bindings.
    public var queue: KeyTemplate?
    public var timeoutMilliseconds: Int
    /// Lower-case names of request headers forwarded as `x-header-<name>`.
    public var forwardHeaders: Set<String>
    public var maxBodyBytes: Int
    /// Where in routes.yaml the route was declared, for messages.
    public var line: Int
    /// For `aggregate`: the legs, and what a failed leg does to the whole.
    public var aggregate: AggregateSpec?
    /// For `stream`: the longest gap between two parts before the stream fails.
    public var idleTimeoutMilliseconds: Int
    /// For `gather`: when to stop collecting.
    public var gather: GatherSpec?
    /// For `job`: a finished job's status answers `303 See Other` to `/v1/jobs/{id}/result`.
    public var resultRedirect: Bool = false

    public init(
        name: String,
        method: String,
        path: PathTemplate,
        shape: Shape = .requestReply,
        exchange: String,
        routingKey: KeyTemplate,
        queue: KeyTemplate? = nil,
        timeoutMilliseconds: Int,
        forwardHeaders: Set<String> = [],
        maxBodyBytes: Int,
        line: Int = 0,
        aggregate: AggregateSpec? = nil,
        idleTimeoutMilliseconds: Int = 10_000,
        gather: GatherSpec? = nil
    ) {
        self.name = name
        self.method = method
        self.path = path
        self.shape = shape
        self.exchange = exchange
        self.routingKey = routingKey
        self.queue = queue
        self.timeoutMilliseconds = timeoutMilliseconds
        self.forwardHeaders = forwardHeaders
        self.maxBodyBytes = maxBodyBytes
        self.line = line
        self.aggregate = aggregate
        self.idleTimeoutMilliseconds = idleTimeoutMilliseconds
        self.gather = gather
    }

    /// Parameters that end up in a routing key or queue name, here or in a leg: their values
    /// may not hold routing wildcards or separators.
    public var keyParameterNames: Set<String> {
        var names = Set(routingKey.parameterNames).union(queue?.parameterNames ?? [])
        for leg in aggregate?.legs ?? [] {
            names.formUnion(leg.route.routingKey.parameterNames)
            names.formUnion(leg.route.queue?.parameterNames ?? [])
        }
        return names
    }
}

/// The legs of an aggregate route and its failure policy.
public struct AggregateSpec: Sendable, Hashable {
    public enum Policy: String, Sendable, Hashable, CaseIterable {
        /// Any failed leg fails the whole request with a 502 naming the legs.
        case all
        /// The legs that answered, plus an `errors` object for the others.
        case partial
    }

    public struct Leg: Sendable, Hashable {
        /// The key of this leg's answer in the merged JSON object.
        public var key: String
        /// A request/reply route of its own: exchange, routing key, queue, timeout, headers.
        public var route: Route
        /// Send the client's request body to this leg.
        public var forwardBody: Bool
        /// Or send this body, with `${name}` filled from path parameters and `use` values
        /// (JSON-escaped, so a template can place them inside JSON strings).
        public var bodyTemplate: KeyTemplate?
        public var bodyContentType: String
        /// Statuses at or above 400 that still count as an answer, e.g. 404.
        public var acceptedStatuses: Set<Int>
        /// Response headers of this leg kept on the merged response as `<key>-<name>`.
        public var keepHeaders: Set<String>
        /// Path-style parameters taken from earlier legs' JSON replies: name → (leg key,
        /// JSON pointer). The leg waits for those legs; the others run in parallel.
        public var uses: [String: Reference]

        public init(
            key: String,
            route: Route,
            forwardBody: Bool = true,
            bodyTemplate: KeyTemplate? = nil,
            bodyContentType: String = "application/json",
            acceptedStatuses: Set<Int> = [],
            keepHeaders: Set<String> = [],
            uses: [String: Reference] = [:]
        ) {
            self.key = key
            self.route = route
            self.forwardBody = forwardBody
            self.bodyTemplate = bodyTemplate
            self.bodyContentType = bodyContentType
            self.acceptedStatuses = acceptedStatuses
            self.keepHeaders = keepHeaders
            self.uses = uses
        }
    }

    /// A value inside an earlier leg's JSON reply: `/<leg key><JSON pointer>`.
    public struct Reference: Sendable, Hashable, CustomStringConvertible {
        public var leg: String
        /// RFC 6901 reference tokens, already unescaped.
        public var pointer: [String]

        public var description: String {
            "/" + ([leg] + pointer).map { $0.replacingOccurrences("~", "~0").replacingOccurrences("/", "~1") }.joined(separator: "/")
        }

        /// Parses `/<leg>/<token>/…` with RFC 6901 escapes.
        public init?(_ text: String) {
            guard text.hasPrefix("/") else { return nil }
            let tokens = text.dropFirst().split(separator: "/", omittingEmptySubsequences: false).map {
                String($0).replacingOccurrences("~1", "/").replacingOccurrences("~0", "~")
            }
            guard let first = tokens.first, !first.isEmpty else { return nil }
            leg = first
            pointer = Array(tokens.dropFirst())
        }
    }

    public var legs: [Leg]
    public var policy: Policy

    public init(legs: [Leg], policy: Policy) {
        self.legs = legs
        self.policy = policy
    }
}

extension String {
    func replacingOccurrences(_ target: String, _ replacement: String) -> String {
        guard contains(target) else { return self }
        var out = ""
        var rest = self[...]
        while let r = rest.firstRange(of: target) {
            out += rest[..<r.lowerBound]
            out += replacement
            rest = rest[r.upperBound...]
        }
        out += rest
        return out
    }
}
