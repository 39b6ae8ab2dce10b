#!/usr/bin/env python3
"""A Gangway worker in Python with pika, written from the README's wire contract alone.

    pika_worker.py AMQP_URL QUEUE [--mode echo|bad-status|bad-header|sleep|status|...] [--sleep-ms N]

In the status modes the reply's x-status is the request's X-Demo header, and the body is sent
all the same (stream-status: as part 0 of a 50-part stream).

It consumes QUEUE with manual acks, answers each request on the default exchange with
routing key = reply_to and the same correlation_id, sets x-status and x-header-* headers,
and acks only after the reply is published. Requests past x-deadline are acked and dropped.
"""
import argparse
import json
import random
import sys
import time

import pika


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("queue")
    p.add_argument("--mode", default="echo", choices=["echo", "bad-status", "bad-header", "sleep", "twice", "stream-shuffled", "stream-stall", "status", "stream-status", "stream-big", "stream-hole", "gather-flood"])
    p.add_argument("--sleep-ms", type=int, default=0)
    args = p.parse_args()

    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_qos(prefetch_count=16)

    def on_request(ch, method, props, body):
        headers = props.headers or {}
        deadline = headers.get("x-deadline")
        if deadline is not None and int(deadline) < time.time() * 1000:
            ch.basic_ack(method.delivery_tag)
            return
        if args.mode == "sleep":
            time.sleep(args.sleep_ms / 1000)
        if args.mode.startswith("stream-"):
            n = 50
            order = list(range(n))
            if args.mode == "stream-shuffled":
                random.Random(7).shuffle(order)
            for i in order:
                if args.mode == "stream-stall" and i == 3:
                    break  # parts 0-2 sent; then nothing more, ever
                if args.mode == "stream-hole" and i == 0:
                    continue  # every part but the first, which never comes
                part_headers = {"x-part": i, "x-final": i == n - 1}
                if i == 0:
                    part_headers["x-status"] = int(headers["x-header-x-demo"]) if args.mode == "stream-status" else 200
                part = {"n": i}
                if args.mode == "stream-big" and i == 3:
                    part["pad"] = "x" * int(headers["x-header-x-demo"])  # one part of about that size
                if args.mode == "stream-hole":
                    part["pad"] = "x" * int(headers["x-header-x-demo"])  # every part about that size
                ch.basic_publish(exchange="", routing_key=props.reply_to, body=json.dumps(part).encode(),
                                 properties=pika.BasicProperties(correlation_id=props.correlation_id,
                                                                 content_type="application/json", headers=part_headers))
            ch.basic_ack(method.delivery_tag)
            return
        reply_headers = {
            "x-status": 200,
            "x-header-x-worker": "python-pika",
            "x-header-x-seen-method": str(headers.get("x-method", "")),
            "x-header-x-seen-path": str(headers.get("x-path", "")),
            "x-header-x-seen-query": str(headers.get("x-query", "")),
            "x-header-x-seen-request-id": str(headers.get("x-request-id", "")),
            "x-header-x-seen-route": str(headers.get("x-route", "")),
            "x-header-x-seen-demo": str(headers.get("x-header-x-demo", "")),
            "x-header-x-seen-expiration": str(props.expiration or ""),
            "x-header-x-seen-app-id": str(props.app_id or ""),
            "x-header-x-seen-params": ",".join(
                f"{k[8:]}={v.decode() if isinstance(v, bytes) else v}" for k, v in sorted(headers.items()) if k.startswith("x-param-")
            ),
        }
        if args.mode == "gather-flood":
            # One replier answering a gather 40 times, each reply of X-Demo bytes.
            for i in range(40):
                ch.basic_publish(exchange="", routing_key=props.reply_to, body=b"r" * int(headers["x-header-x-demo"]),
                                 properties=pika.BasicProperties(correlation_id=props.correlation_id, content_type="text/plain",
                                                                 headers={"x-status": 200, "x-replier": f"r{i}"}))
            ch.basic_ack(method.delivery_tag)
            return
        if args.mode == "bad-status":
            reply_headers["x-status"] = "not-a-status"
        if args.mode == "status":
            reply_headers["x-status"] = int(headers["x-header-x-demo"])
        if args.mode == "bad-header":
            reply_headers["x-header-x-evil"] = "a\r\nSet-Cookie: x=1"
        for _ in range(2 if args.mode == "twice" else 1):
            if not props.reply_to:
                break
            ch.basic_publish(
                exchange="",
                routing_key=props.reply_to,
                properties=pika.BasicProperties(
                    correlation_id=props.correlation_id,
                    content_type=props.content_type,
                    headers=reply_headers,
                ),
                body=body,
            )
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue=args.queue, on_message_callback=on_request)
    print("ready", flush=True)
    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
