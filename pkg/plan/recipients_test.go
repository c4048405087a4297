package plan

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"filippo.io/age"
)

func newRecipient(t *testing.T) string {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id.Recipient().String()
}

func TestLoadRecipients(t *testing.T) {
	r1, r2, r3 := newRecipient(t), newRecipient(t), newRecipient(t)
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.txt", "# ops team\n"+r2+"\n\n  "+r3+"  \n# end\n")
	bad := write("bad.txt", r2+"\n# the next one is cut short\n"+r3[:20]+"\n")
	comments := write("comments.txt", "# nobody yet\n\n")

	tests := []struct {
		name    string
		give    Encryption
		want    []string
		wantErr []string // every part must appear in the error
	}{
		{name: "inline only", give: Encryption{Recipients: []string{r1}}, want: []string{r1}},
		{name: "inline, then the file's in its order, comments and blanks skipped", give: Encryption{Recipients: []string{r1}, RecipientsFile: good}, want: []string{r1, r2, r3}},
		{name: "file only", give: Encryption{RecipientsFile: good}, want: []string{r2, r3}},
		{name: "a bad line names the file and the line", give: Encryption{RecipientsFile: bad}, wantErr: []string{"spec.filters.encryption.recipientsFile", bad, "line 3", "not an age X25519 recipient"}},
		{name: "a missing file names the field and the path", give: Encryption{RecipientsFile: filepath.Join(dir, "gone.txt")}, wantErr: []string{"spec.filters.encryption.recipientsFile", "gone.txt", "no such file"}},
		{name: "a file of comments holds no recipient", give: Encryption{Recipients: []string{r1}, RecipientsFile: comments}, wantErr: []string{comments, "holds no recipient"}},
		{name: "a bad inline recipient names its index", give: Encryption{Recipients: []string{r1, "age1nope"}}, wantErr: []string{"spec.filters.encryption.recipients[1]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.give.LoadRecipients()
			if tt.wantErr == nil {
				if err != nil || !reflect.DeepEqual(got, tt.want) {
					t.Fatalf("LoadRecipients() = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("LoadRecipients() = %q, nil; want an error with %q", got, tt.wantErr)
			}
			for _, part := range tt.wantErr {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("error %q lacks %q", err, part)
				}
			}
		})
	}
}
