<?php
// Laravel oracle for tests/laravel. Usage:
//   php oracle.php payloads                 -> JSON lines: payloads built by Laravel's own code
//   php oracle.php next    FILE.jsonl       -> JSON lines: what dispatchNextJobInChain() dispatches
//   php oracle.php check   FILE.jsonl       -> JSON lines: facts about Python-built payloads, as PHP sees them
//   php oracle.php qkeys   FILE.jsonl       -> one md5(json_encode(['class' => $c] + $d)) per line
require __DIR__ . '/bootstrap.php';

use App\Jobs;
use Illuminate\Container\Container;

const APP_KEY = 'base64:2fl+Ktvkfl+Fuz4Qp/A75G2RTiWVA/ZoKZvp6fiiM10=';
const APP_KEY_128 = 'base64:q8SYZ1pDEXGbxPvqpVqD9A==';

function datasets(): array {
    return [
        'simple' => ['image_id' => 42, 'path' => 'photos/2024/a b.jpg'],
        'unicode' => ['name' => "Zürich 😀 日本", 'q' => "quote\"back\\slash\0nul\x7f", 'sep' => "a\u{2028}b\u{2029}", 'url' => 'http://x/y?z=1&w=<2>'],
        'floats' => ['lat' => 47.3769, 'lng' => -8.5417, 'one' => 1.0, 'big' => 1e25, 'tiny' => 1.5e-7, 'neg0' => -0.0,
                     'e16' => 1e16, 'e17' => 1e17, 'small' => 0.0001, 'smaller' => 0.00001, 'third' => 1/3],
        'nested' => ['a' => [1, 2, [3, ['x' => 'y']]], 'm' => ['5' => 'five', '01' => 'zero-one', 7 => 'seven'],
                     'empty' => [], 'bools' => [true, false, null], 'list' => ['0' => 'a', '1' => 'b'],
                     'neg' => [-1 => 'm', 0 => 'z'], 'big' => PHP_INT_MAX, 'small' => PHP_INT_MIN],
        'gps' => ['image_id' => 7, 'metadata' => ['GPSLatitude' => 46.5, 'GPSLongitude' => 6.63, 'GPSPosition' => "46 deg 30' 0.00\" N"]],
    ];
}

function chain_dispatch(array $jobs, ?string $queue = null, ?string $connection = null): object {
    // Illuminate\Foundation\Bus\PendingChain::dispatch() (8.x .. 12.x)
    $first = array_shift($jobs);
    if ($connection) { $first->chainConnection = $connection; $first->connection = $first->connection ?: $connection; }
    if ($queue) { $first->chainQueue = $queue; $first->queue = $first->queue ?: $queue; }
    $first->chain($jobs);
    $first->chainCatchCallbacks = [];
    return $first;
}

function expect_of(object $job): array {
    $chain = [];
    foreach ($job->chained as $s) {
        $o = unserialize($s);
        $chain[] = ['class' => get_class($o), 'data_json' => json_encode(data_of($o))];
    }
    return ['class' => get_class($job), 'data_json' => json_encode(data_of($job)), 'chain' => $chain,
            'queue' => $job->queue, 'connection' => $job->connection];
}

function emit(array $row): void { echo json_encode($row, JSON_THROW_ON_ERROR), "\n"; }

function mode_payloads(): void {
    $q = test_queue();
    $ds = datasets();
    $app = ['ThumbnailProcessJob', 'MetadataProcessJob', 'GeolocationProcessJob', 'FaceProcessJob'];
    $queues = ['ThumbnailProcessJob' => 'thumbnails', 'MetadataProcessJob' => 'metadata',
               'GeolocationProcessJob' => 'geolocation', 'FaceProcessJob' => 'faces'];
    use_app_key(null);
    foreach ($app as $short) {
        foreach ($ds as $dn => $d) {
            $cls = "App\\Jobs\\$short";
            $job = new $cls($d);
            $job->onQueue($queues[$short]);
            emit(['name' => "$short/$dn", 'body' => $q->payloadFor($job, $job->queue), 'expect' => expect_of($job), 'profile' => 'laravel8']);
        }
    }
    foreach (['ProtectedDataJob', 'PrivateDataJob', 'PlainJob', 'TriesJob', 'ModernJob', 'ModernTriesJob'] as $short) {
        foreach (['simple', 'unicode', 'nested'] as $dn) {
            $cls = "App\\Jobs\\Variants\\$short";
            $job = new $cls($ds[$dn]);
            emit(['name' => "$short/$dn", 'body' => $q->payloadFor($job), 'expect' => expect_of($job),
                  'profile' => str_starts_with($short, 'Modern') ? 'laravel10' : 'laravel8']);
        }
    }
    foreach ([['AES-256-CBC', APP_KEY], ['AES-256-GCM', APP_KEY], ['AES-128-CBC', APP_KEY_128], ['AES-128-GCM', APP_KEY_128]] as [$cipher, $key]) {
        use_app_key($key, $cipher);
        $job = new Jobs\Variants\EncryptedJob($ds['unicode']);
        $job->chain([new Jobs\Variants\EncryptedJob($ds['floats'])]);
        emit(['name' => "EncryptedJob/$cipher", 'body' => $q->payloadFor($job), 'expect' => expect_of($job), 'app_key' => $key,
              'cipher' => $cipher, 'profile' => 'laravel8']);
    }
    use_app_key(null);
    // Metadata -> Geolocation as the app does it: Bus::chain([new NextJob($data)])->onQueue('geolocation')->dispatch()
    $job = chain_dispatch([new Jobs\GeolocationProcessJob($ds['gps'])], 'geolocation');
    emit(['name' => 'chain/geo-only', 'body' => $q->payloadFor($job, $job->queue), 'expect' => expect_of($job), 'profile' => 'laravel8']);
    // a three-job chain with connection and queue
    $job = chain_dispatch([new Jobs\ThumbnailProcessJob($ds['simple']), new Jobs\MetadataProcessJob($ds['gps']),
                           new Jobs\GeolocationProcessJob($ds['unicode'])], 'metadata', 'rabbitmq');
    emit(['name' => 'chain/three', 'body' => $q->payloadFor($job, $job->queue), 'expect' => expect_of($job), 'profile' => 'laravel8']);
    // chain where the second job already has its own queue
    $second = new Jobs\FaceProcessJob($ds['floats']); $second->onQueue('faces');
    $job = chain_dispatch([new Jobs\MetadataProcessJob($ds['nested']), $second, new Jobs\ThumbnailProcessJob($ds['simple'])], 'metadata');
    emit(['name' => 'chain/own-queue', 'body' => $q->payloadFor($job, $job->queue), 'expect' => expect_of($job), 'profile' => 'laravel8']);
    // modern (>= 9.4) layout chain
    $job = chain_dispatch([new Jobs\Variants\ModernJob($ds['simple']), new Jobs\Variants\ModernTriesJob($ds['gps']),
                           new Jobs\Variants\ModernJob($ds['floats'])], 'geolocation', 'rabbitmq');
    emit(['name' => 'chain/modern', 'body' => $q->payloadFor($job, $job->queue), 'expect' => expect_of($job), 'profile' => 'laravel10']);
    $job = chain_dispatch([new Jobs\Variants\ProtectedDataJob($ds['simple']), new Jobs\Variants\PrivateDataJob($ds['nested'])], 'x');
    emit(['name' => 'chain/visibility', 'body' => $q->payloadFor($job, $job->queue), 'expect' => expect_of($job), 'profile' => 'laravel8']);
}

function command_of(array $payload, ?string $key, string $cipher = 'AES-256-CBC') {
    $cmd = $payload['data']['command'];
    if (str_starts_with($cmd, 'O:')) { return unserialize($cmd); }
    use_app_key($key, $cipher);
    return unserialize(Container::getInstance()->make(\Illuminate\Contracts\Encryption\Encrypter::class)->decrypt($cmd));
}

function mode_next(string $file): void {
    $q = test_queue();
    foreach (json_lines_in($file) as $row) {
        $payload = json_decode($row['body'], true);
        $job = command_of($payload, $row['app_key'] ?? null, $row['cipher'] ?? 'AES-256-CBC');
        $bus = new CapturingDispatcher();
        Container::getInstance()->instance(\Illuminate\Contracts\Bus\Dispatcher::class, $bus);
        $job->dispatchNextJobInChain();
        gc_collect_cycles();
        if (!$bus->dispatched) { emit(['name' => $row['name'], 'next' => null]); continue; }
        $next = $bus->dispatched[0];
        use_app_key($row['app_key'] ?? null, $row['cipher'] ?? 'AES-256-CBC');
        $body = $q->payloadFor($next, $next->queue);
        emit(['name' => $row['name'], 'next' => ['serialized' => serialize($next), 'body' => $body,
              'queue' => $next->queue, 'connection' => $next->connection, 'expect' => expect_of($next)]]);
    }
}

function mode_check(string $file): void {
    foreach (json_lines_in($file) as $row) {
        $payload = json_decode($row['body'], true, 512, JSON_THROW_ON_ERROR);
        $out = ['name' => $row['name'], 'payload_keys' => array_keys($payload), 'data_keys' => array_keys($payload['data'])];
        try {
            $job = command_of($payload, $row['app_key'] ?? null, $row['cipher'] ?? 'AES-256-CBC');
            $out['class'] = get_class($job);
            $out['commandName'] = $payload['data']['commandName'];
            $out['is_should_queue'] = $job instanceof \Illuminate\Contracts\Queue\ShouldQueue;
            $out['expect'] = expect_of($job);
            $out['chainQueue'] = $job->chainQueue;
            $out['chainConnection'] = $job->chainConnection;
            $out['chainCatchCallbacks'] = $job->chainCatchCallbacks;
            $out['reserialized'] = serialize($job);
            $out['maxTries'] = $payload['maxTries'];
        } catch (\Throwable $e) {
            $out['error'] = get_class($e) . ': ' . $e->getMessage();
        }
        emit($out);
    }
}

function mode_qkeys(string $file): void {
    $fh = fopen($file, 'r');
    while (($line = fgets($fh)) !== false) {
        if (trim($line) === '') continue;
        $row = json_decode($line, true, 512, JSON_THROW_ON_ERROR);
        $json = json_encode(['class' => $row['c']] + $row['d']);
        echo $json === false ? 'ERROR:' . json_last_error_msg() : md5($json), "\n";
    }
}

$mode = $argv[1] ?? '';
match ($mode) {
    'payloads' => mode_payloads(),
    'next' => mode_next($argv[2]),
    'check' => mode_check($argv[2]),
    'qkeys' => mode_qkeys($argv[2]),
    default => fwrite(STDERR, "usage: oracle.php payloads|next|check|qkeys [FILE]\n"),
};
