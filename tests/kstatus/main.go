// Command kstatus prints the kstatus verdict of every object in a Kubernetes List read from
// stdin (the output of `kubectl get ... -o json`; a single object works too), one JSON line per
// object: {"namespace", "name", "generation", "status", "message"}. The verdict comes from
// sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute, the library Flux's health checks use.
// An object kstatus cannot judge gets "error" instead of a status; a malformed input exits 1.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Namespace  string `json:"namespace"`
	Name       string `json:"name"`
	Generation int64  `json:"generation"`
	Status     string `json:"status,omitempty"`
	Message    string `json:"message"`
	Error      string `json:"error,omitempty"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "kstatus: %v\n", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	// Kubernetes' decoder turns integral numbers into int64, as unstructured accessors expect.
	var document map[string]interface{}
	if err := utiljson.Unmarshal(data, &document); err != nil {
		return fmt.Errorf("stdin is not a JSON object: %w", err)
	}
	objects := []map[string]interface{}{document}
	if items, isList := document["items"].([]interface{}); isList {
		objects = objects[:0]
		for i, item := range items {
			object, ok := item.(map[string]interface{})
			if !ok {
				return fmt.Errorf("items[%d] is not an object", i)
			}
			objects = append(objects, object)
		}
	}
	encoder := json.NewEncoder(out)
	for _, object := range objects {
		u := &unstructured.Unstructured{Object: object}
		v := verdict{Namespace: u.GetNamespace(), Name: u.GetName(), Generation: u.GetGeneration()}
		result, err := status.Compute(u)
		if err != nil {
			v.Error = err.Error()
		} else {
			v.Status = result.Status.String()
			v.Message = result.Message
		}
		if err := encoder.Encode(v); err != nil {
			return err
		}
	}
	return nil
}
