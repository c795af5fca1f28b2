CREATE TABLE cache_locks (
	`key` VARCHAR(255) NOT NULL, 
	owner VARCHAR(255) NOT NULL, 
	expiration INTEGER NOT NULL, 
	PRIMARY KEY (`key`)
);

CREATE INDEX ix_cache_locks_expiration ON cache_locks (expiration);

CREATE TABLE face_metrics (
	id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT, 
	fingerprint VARCHAR(64) NOT NULL, 
	fitted_at DATETIME, 
	people INTEGER, 
	faces INTEGER, 
	negatives INTEGER, 
	weight FLOAT(53), 
	seconds FLOAT(53), 
	why VARCHAR(255), 
	matrix LONGTEXT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (fingerprint)
);

CREATE TABLE failed_jobs (
	id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT, 
	uuid VARCHAR(255) NOT NULL, 
	connection TEXT NOT NULL, 
	queue TEXT NOT NULL, 
	payload LONGTEXT NOT NULL, 
	exception LONGTEXT NOT NULL, 
	failed_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP, 
	PRIMARY KEY (id), 
	UNIQUE (uuid)
);

CREATE TABLE geocode_cache (
	coord_key VARCHAR(64) NOT NULL, 
	place JSON, 
	source VARCHAR(16) NOT NULL, 
	created_at DATETIME, 
	PRIMARY KEY (coord_key)
);

CREATE TABLE images (
	id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT, 
	path VARCHAR(1024) NOT NULL, 
	taken_at DATETIME, 
	camera_make VARCHAR(255), 
	camera_model VARCHAR(255), 
	lens VARCHAR(255), 
	width INTEGER, 
	height INTEGER, 
	orientation SMALLINT, 
	latitude FLOAT(53), 
	longitude FLOAT(53), 
	altitude FLOAT(53), 
	exif JSON, 
	metadata_status VARCHAR(32), 
	metadata_error TEXT, 
	metadata_at DATETIME, 
	thumbnails JSON, 
	thumbnails_at DATETIME, 
	country VARCHAR(255), 
	country_code VARCHAR(8), 
	state VARCHAR(255), 
	county VARCHAR(255), 
	city VARCHAR(255), 
	road VARCHAR(255), 
	postcode VARCHAR(64), 
	display_name VARCHAR(1024), 
	place JSON, 
	place_source VARCHAR(16), 
	geocoded_at DATETIME, 
	faces_count INTEGER, 
	faces_at DATETIME, 
	created_at DATETIME, 
	updated_at DATETIME, 
	PRIMARY KEY (id)
);

CREATE TABLE queues (
	id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT, 
	queue_key VARCHAR(32) NOT NULL, 
	created_at DATETIME, 
	updated_at DATETIME, 
	PRIMARY KEY (id), 
	UNIQUE (queue_key)
);

CREATE TABLE rate_limits (
	name VARCHAR(64) NOT NULL, 
	next_at FLOAT(53) NOT NULL, 
	paused_until FLOAT(53) NOT NULL, 
	strikes INTEGER NOT NULL, 
	PRIMARY KEY (name)
);

CREATE TABLE schema_migrations (
	version INTEGER NOT NULL AUTO_INCREMENT, 
	name VARCHAR(255) NOT NULL, 
	applied_at DATETIME, 
	PRIMARY KEY (version)
);

CREATE TABLE faces (
	id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT, 
	parent_id BIGINT UNSIGNED, 
	image_id BIGINT UNSIGNED NOT NULL, 
	face_index INTEGER NOT NULL, 
	name VARCHAR(255), 
	encoding JSON, 
	status ENUM('process','unknown','not_face','ok') NOT NULL DEFAULT 'process', 
	location JSON, 
	distance FLOAT(53), 
	created_at DATETIME, 
	updated_at DATETIME, 
	matched_parent_id BIGINT UNSIGNED, 
	match_note VARCHAR(255), 
	suggested_group BIGINT UNSIGNED, 
	PRIMARY KEY (id), 
	FOREIGN KEY(parent_id) REFERENCES faces (id) ON DELETE SET NULL, 
	FOREIGN KEY(image_id) REFERENCES images (id) ON DELETE CASCADE, 
	FOREIGN KEY(matched_parent_id) REFERENCES faces (id) ON DELETE SET NULL
);

CREATE INDEX faces_image_id_index ON faces (image_id);

CREATE INDEX faces_parent_status_index ON faces (parent_id, status);

CREATE INDEX faces_review_index ON faces (suggested_group, status, parent_id);

CREATE INDEX faces_suggested_group_index ON faces (suggested_group);

CREATE INDEX faces_unreviewed_index ON faces (status, parent_id, matched_parent_id);

CREATE TABLE face_rejections (
	face_id BIGINT UNSIGNED NOT NULL, 
	person_id BIGINT UNSIGNED NOT NULL, 
	created_at DATETIME, 
	PRIMARY KEY (face_id, person_id), 
	FOREIGN KEY(face_id) REFERENCES faces (id) ON DELETE CASCADE, 
	FOREIGN KEY(person_id) REFERENCES faces (id) ON DELETE CASCADE
);
