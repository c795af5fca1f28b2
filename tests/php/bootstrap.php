<?php
// Test fixtures: the app's four job classes (as the Laravel app has them) plus variants, and a
// queue that builds payloads with Laravel's own Illuminate\Queue\Queue code and the RabbitMQ
// driver's createPayloadArray override (adds 'id').
declare(strict_types=0);
error_reporting(E_ALL);
ini_set('serialize_precision', '-1');
require '/usr/share/php/Illuminate/autoload.php';

use Illuminate\Container\Container;
use Illuminate\Encryption\Encrypter;

$__c = new Container();
Container::setInstance($__c);

function use_app_key(?string $key, string $cipher = 'AES-256-CBC'): void {
    $c = Container::getInstance();
    if ($key === null) {
        $c->forgetInstance(\Illuminate\Contracts\Encryption\Encrypter::class);
        unset($c[\Illuminate\Contracts\Encryption\Encrypter::class]);
        return;
    }
    $raw = str_starts_with($key, 'base64:') ? base64_decode(substr($key, 7)) : $key;
    $c->instance(\Illuminate\Contracts\Encryption\Encrypter::class, new Encrypter($raw, $cipher));
}

/** Illuminate\Queue\Queue with the vyuldashev RabbitMQQueue::createPayloadArray override. */
class TestRabbitQueue extends \Illuminate\Queue\Queue implements \Illuminate\Contracts\Queue\Queue {
    public function size($queue = null) { return 0; }
    public function push($job, $data = '', $queue = null) { return $this->createPayload($job, $queue, $data); }
    public function pushRaw($payload, $queue = null, array $options = []) { return $payload; }
    public function later($delay, $job, $data = '', $queue = null) { return $this->createPayload($job, $queue, $data); }
    public function pop($queue = null) { return null; }
    protected function createPayloadArray($job, $queue, $data = '') {
        return array_merge(parent::createPayloadArray($job, $queue, $data), [
            'id' => (string) \Illuminate\Support\Str::uuid(),
        ]);
    }
    public function payloadFor($job, $queue = null): string { return $this->createPayload($job, $queue); }
}

function test_queue(): TestRabbitQueue {
    $q = new TestRabbitQueue();
    $q->setContainer(Container::getInstance());
    $q->setConnectionName('rabbitmq');
    return $q;
}

/** Captures what dispatch() / dispatchNextJobInChain() hands to the bus. */
class CapturingDispatcher implements \Illuminate\Contracts\Bus\Dispatcher {
    public array $dispatched = [];
    public function dispatch($command) { $this->dispatched[] = $command; return null; }
    public function dispatchSync($command, $handler = null) { return $this->dispatch($command); }
    public function dispatchNow($command, $handler = null) { return $this->dispatch($command); }
    public function hasCommandHandler($command) { return false; }
    public function getCommandHandler($command) { return false; }
    public function pipeThrough(array $pipes) { return $this; }
    public function map(array $map) { return $this; }
    public function dispatchAfterResponse($command, $handler = null) { return $this->dispatch($command); }
}

/**
 * SerializesModels as Laravel >= 9.4 writes it (skips properties === their declared default),
 * copied from LF10 src/Illuminate/Queue/SerializesModels.php::__serialize, minus model handling.
 */
trait ModernSerializesModels {
    use \Illuminate\Queue\SerializesModels;
    public function __serialize() {
        $values = [];
        $properties = (new \ReflectionClass($this))->getProperties();
        $class = get_class($this);
        foreach ($properties as $property) {
            if ($property->isStatic()) { continue; }
            $property->setAccessible(true);
            if (! $property->isInitialized($this)) { continue; }
            $value = $this->getPropertyValue($property);
            if ($property->hasDefaultValue() && $value === $property->getDefaultValue()) { continue; }
            $name = $property->getName();
            if ($property->isPrivate()) { $name = "\0{$class}\0{$name}"; }
            elseif ($property->isProtected()) { $name = "\0*\0{$name}"; }
            $values[$name] = $this->getSerializedPropertyValue($value);
        }
        return $values;
    }
}

require __DIR__ . '/jobs.php';

function data_of(object $job) {
    $r = new \ReflectionProperty($job, 'data');
    $r->setAccessible(true);
    return $r->getValue($job);
}

function json_lines_in(string $path): array {
    $out = [];
    foreach (file($path, FILE_IGNORE_NEW_LINES | FILE_SKIP_EMPTY_LINES) as $line) {
        $out[] = json_decode($line, true, 512, JSON_THROW_ON_ERROR);
    }
    return $out;
}
