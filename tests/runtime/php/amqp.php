<?php
// The PHP side of the runtime tests: what the Laravel app and `artisan queue:retry` put on the
// broker, with Laravel's own payload code and php-amqplib (the driver's pushRaw, §3.3).
//   php amqp.php push  AMQP_URL QUEUE   < {"class": ..., "data": {...}}   -> prints the body
//   php amqp.php retry AMQP_URL         < failed_jobs row {"payload", "queue"} -> prints the body
//   php amqp.php declare-delay AMQP_URL QUEUE TTL_MS < {}  -> laterRaw's delay-queue declare
// `retry` is RetryCommand::retryJob for database-uuids: resetAttempts + refreshRetryUntil, each a
// plain json_encode, then pushRaw with laravel.attempts = 0 (the caller then deletes the row, as
// forget() would: this PHP has no pdo_mysql).
require __DIR__ . '/../../php/bootstrap.php';
require '/usr/share/php/PhpAmqpLib/autoload.php';

use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Message\AMQPMessage;
use PhpAmqpLib\Wire\AMQPTable;

function amqp_connect(string $url): AMQPStreamConnection {
    $u = parse_url($url);
    $vhost = isset($u['path']) && $u['path'] !== '/' ? urldecode(substr($u['path'], 1)) : '/';
    return new AMQPStreamConnection($u['host'], $u['port'] ?? 5672, urldecode($u['user'] ?? 'guest'),
                                    urldecode($u['pass'] ?? 'guest'), $vhost);
}

function push_raw(string $url, string $payload, string $queue, int $attempts = 0): void {
    $conn = amqp_connect($url);
    $ch = $conn->channel();
    $ch->confirm_select();
    $decoded = json_decode($payload, true);
    $props = ['content_type' => 'application/json', 'delivery_mode' => AMQPMessage::DELIVERY_MODE_PERSISTENT];
    if (isset($decoded['id'])) { $props['correlation_id'] = $decoded['id']; }
    $msg = new AMQPMessage($payload, $props);
    $msg->set('application_headers', new AMQPTable(['laravel' => ['attempts' => $attempts]]));
    $ch->basic_publish($msg, '', $queue, true);
    $ch->wait_for_pending_acks_returns(10);
    $ch->close();
    $conn->close();
}

function reset_attempts(string $payload): string {
    $payload = json_decode($payload, true);
    if (isset($payload['attempts'])) { $payload['attempts'] = 0; }
    return json_encode($payload);
}

function refresh_retry_until(string $payload): string {
    $payload = json_decode($payload, true);
    if (! isset($payload['data']['command'])) { return json_encode($payload); }
    $instance = unserialize($payload['data']['command']);
    if (is_object($instance) && ! $instance instanceof \__PHP_Incomplete_Class && method_exists($instance, 'retryUntil')) {
        $r = $instance->retryUntil();
        $payload['retryUntil'] = $r instanceof DateTimeInterface ? $r->getTimestamp() : $r;
    }
    return json_encode($payload);
}

$in = json_decode(stream_get_contents(STDIN), true, 512, JSON_THROW_ON_ERROR);
switch ($argv[1]) {
    case 'push':
        $class = $in['class'];
        $job = (new $class($in['data']))->onQueue($argv[3]);
        $body = test_queue()->payloadFor($job, $argv[3]);
        push_raw($argv[2], $body, $argv[3]);
        echo $body;
        break;
    case 'retry':
        $body = refresh_retry_until(reset_attempts($in['payload']));
        push_raw($argv[2], $body, $in['queue']);
        echo $body;
        break;
    case 'declare-delay':
        $conn = amqp_connect($argv[2]);
        $ch = $conn->channel();
        $ttl = (int) $argv[4];
        $ch->queue_declare("{$argv[3]}.delay.{$ttl}", false, true, false, false, false, new AMQPTable([
            'x-dead-letter-exchange' => '',
            'x-dead-letter-routing-key' => $argv[3],
            'x-message-ttl' => $ttl,
            'x-expires' => $ttl * 2,
        ]));
        $conn->close();
        echo "ok";
        break;
    default:
        fwrite(STDERR, "usage: amqp.php push|retry AMQP_URL [QUEUE]\n");
        exit(2);
}
