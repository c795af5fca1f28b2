<?php
// The app's job classes (each constructed with a $data array) and shape variants.
namespace App\Jobs;

use Illuminate\Bus\Queueable;
use Illuminate\Contracts\Queue\ShouldBeEncrypted;
use Illuminate\Contracts\Queue\ShouldQueue;
use Illuminate\Foundation\Bus\Dispatchable;
use Illuminate\Queue\InteractsWithQueue;
use Illuminate\Queue\SerializesModels;

class ThumbnailProcessJob implements ShouldQueue
{
    use Dispatchable, InteractsWithQueue, Queueable, SerializesModels;
    public $data;
    public function __construct(array $data) { $this->data = $data; }
    public function handle() {}
}

class MetadataProcessJob implements ShouldQueue
{
    use Dispatchable, InteractsWithQueue, Queueable, SerializesModels;
    public $data;
    public function __construct(array $data) { $this->data = $data; }
    public function handle() {}
}

class GeolocationProcessJob implements ShouldQueue
{
    use Dispatchable, InteractsWithQueue, Queueable, SerializesModels;
    public $data;
    public function __construct(array $data) { $this->data = $data; }
    public function handle() {}
}

class FaceProcessJob implements ShouldQueue
{
    use Dispatchable, InteractsWithQueue, Queueable, SerializesModels;
    public $data;
    public function __construct(array $data) { $this->data = $data; }
    public function handle() {}
}

namespace App\Jobs\Variants;

use Illuminate\Bus\Queueable;
use Illuminate\Contracts\Queue\ShouldBeEncrypted;
use Illuminate\Contracts\Queue\ShouldQueue;
use Illuminate\Foundation\Bus\Dispatchable;
use Illuminate\Queue\InteractsWithQueue;
use Illuminate\Queue\SerializesModels;

class ProtectedDataJob implements ShouldQueue
{
    use Dispatchable, InteractsWithQueue, Queueable, SerializesModels;
    protected $data;
    public function __construct(array $data) { $this->data = $data; }
}

class PrivateDataJob implements ShouldQueue
{
    use Dispatchable, InteractsWithQueue, Queueable, SerializesModels;
    private $data;
    public function __construct(array $data) { $this->data = $data; }
}

/** No SerializesModels: plain serialize() of every property. */
class PlainJob implements ShouldQueue
{
    use Dispatchable, InteractsWithQueue, Queueable;
    public $data;
    public function __construct(array $data) { $this->data = $data; }
}

class TriesJob implements ShouldQueue
{
    use Dispatchable, InteractsWithQueue, Queueable, SerializesModels;
    public $tries = 5;
    public $maxExceptions = 2;
    public $backoff = [10, 60, 120];
    public $timeout = 90;
    public $failOnTimeout = true;
    public $data;
    public function __construct(array $data) { $this->data = $data; }
    public function retryUntil() { return 1900000000; }
}

class EncryptedJob implements ShouldQueue, ShouldBeEncrypted
{
    use Dispatchable, InteractsWithQueue, Queueable, SerializesModels;
    protected $data;
    public function __construct(array $data) { $this->data = $data; }
}

/** Laravel >= 9.4 SerializesModels layout (defaults omitted). */
class ModernJob implements ShouldQueue
{
    use Dispatchable, InteractsWithQueue, Queueable, \ModernSerializesModels;
    public $data;
    public function __construct(array $data) { $this->data = $data; }
}

class ModernTriesJob implements ShouldQueue
{
    use Dispatchable, InteractsWithQueue, Queueable, \ModernSerializesModels;
    public $tries = 3;
    public $timeout = 120;
    public $data;
    public function __construct(array $data) { $this->data = $data; }
}
