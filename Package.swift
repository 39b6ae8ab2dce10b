// swift-tools-version:6.2
import PackageDescription

let package = Package(
    name: "gangway",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "gangway", targets: ["gangway"]),
        .library(name: "GangwayWorker", targets: ["GangwayWorker"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
    ],
    targets: [
        // The only C in the project: rabbitmq-c's headers plus a non-variadic login and an eventfd.
        .target(
            name: "CRabbitMQ",
            linkerSettings: [.linkedLibrary("rabbitmq"), .linkedLibrary("ssl"), .linkedLibrary("crypto")]
        ),
        // Pure Swift AMQP model and protocol state machines. No IO, no C.
        .target(
            name: "GangwayAMQPCore",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")]
        ),
        // The only importer of CRabbitMQ: one owner thread per connection.
        .target(
            name: "GangwayAMQP",
            dependencies: [
                "CRabbitMQ",
                "GangwayAMQPCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // routes.yaml + definitions.json → validated, immutable RouteTable / Topology.
        .target(
            name: "GangwayConfig",
            dependencies: [
                "GangwayAMQPCore",
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // Correlator and the message-bus seam; knows nothing of rabbitmq-c or HTTP servers.
        .target(
            name: "GangwayCore",
            dependencies: [
                "GangwayConfig",
                "GangwayAMQPCore",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // The HTTP edge on Hummingbird.
        .target(
            name: "GangwayEdge",
            dependencies: [
                "GangwayAMQPCore",
                "GangwayCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The Swift worker SDK.
        .target(
            name: "GangwayWorker",
            dependencies: [
                "GangwayAMQP",
                "GangwayAMQPCore",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "gangway",
            dependencies: [
                "GangwayAMQP",
                "GangwayConfig",
                "GangwayCore",
                "GangwayEdge",
                "GangwayWorker",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "GangwayAMQPCoreTests",
            dependencies: ["GangwayAMQPCore", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(name: "CRabbitMQTests", dependencies: ["CRabbitMQ"]),
        .testTarget(name: "GangwayAMQPTests", dependencies: ["CRabbitMQ", "GangwayAMQP", "GangwayAMQPCore"]),
        .testTarget(name: "GangwayConfigTests", dependencies: ["GangwayConfig", "GangwayAMQPCore"]),
        .testTarget(
            name: "GangwayCoreTests",
            dependencies: ["GangwayCore", "GangwayConfig", "GangwayAMQPCore", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio")]
        ),
        .testTarget(
            name: "GangwayWorkerTests",
            dependencies: [
                "GangwayWorker",
                "GangwayAMQPCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "GangwayEdgeTests",
            dependencies: [
                "GangwayEdge",
                "GangwayCore",
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
            ]
        ),
    ]
)
